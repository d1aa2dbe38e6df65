"""Data-parallel training: which rank this process is, and the decisions rank 0 makes once for every rank.

Two ways to start W ranks, one code path:
- Lightning's launcher (`anima pretrain device=ddp device.devices=2`): the `anima` process is rank 0; inside
  `trainer.fit` Lightning re-executes the command line once per other local rank, with LOCAL_RANK, NODE_RANK
  and WORLD_SIZE in their environment. Rank 0 has made its decisions by then, so it hands them down in an
  environment variable (`PLAN_ENV`) that the children inherit.
- torchrun (`torchrun --nproc_per_node=2 -m anima pretrain device=ddp device.devices=2`): all ranks start
  together with RANK/LOCAL_RANK/WORLD_SIZE. The process group is opened early (Lightning then reuses it) and
  rank 0 broadcasts its decisions; the other ranks wait for them before touching data, so the token caches
  are built once.

The decisions ("plan"): the MLflow run id, the output (and checkpoint) dir and the checkpoint to resume from
(`resume=auto` looks it up on rank 0 only; Lightning does not share `ckpt_path`). Only rank 0 talks to MLflow.
No torch import at module level: the CLI reads `env_rank` at start-up.
"""

from __future__ import annotations

import json
import os
from typing import Any

from anima.errors import AnimaError

PLAN_ENV = "ANIMA_DDP_PLAN"


def torchrun_launched() -> bool:
    """Started by torchrun (torch.distributed.elastic): every rank runs the whole command itself."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def env_rank(num_nodes: int = 1) -> int:
    """This process's global rank as its launcher told it (0 for a plain process, and for the process that
    Lightning's launcher starts the other ranks from): RANK under torchrun, else NODE_RANK * ranks per node +
    LOCAL_RANK (Lightning's children)."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if "LOCAL_RANK" not in env:
        return 0
    per_node = max(1, int(env.get("WORLD_SIZE") or 1) // max(1, num_nodes))
    return int(env.get("NODE_RANK") or 0) * per_node + int(env["LOCAL_RANK"] or 0)


def _process_group(accelerator: str) -> None:
    """Open the default process group from torchrun's environment (env://), unless it is open: gloo for CPU
    tensors, plus nccl for CUDA ones when training on GPUs. Lightning's DDP strategy then uses this group."""
    import atexit

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())


def share_plan(plan: dict[str, Any] | None, rank: int, accelerator: str = "cpu") -> dict[str, Any]:
    """Rank 0 passes its plan and gets it back; every other rank passes None and gets rank 0's.

    Under torchrun this is a broadcast (the other ranks block here until rank 0 has prepared its data and
    started its run); under Lightning's launcher rank 0 leaves the plan in the environment for the children
    it is about to start (`clear_plan` removes it after the fit)."""
    if torchrun_launched():
        import torch
        import torch.distributed as dist

        _process_group(accelerator)
        box = [plan if rank == 0 else None]
        dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
        if box[0] is None:
            raise AnimaError("data-parallel rank 0 sent no run plan")
        return box[0]
    if rank == 0:
        if plan is None:
            raise AnimaError("rank 0 has no run plan to share")
        os.environ[PLAN_ENV] = json.dumps(plan)
        return plan
    text = os.environ.get(PLAN_ENV)
    if not text:
        raise AnimaError(f"data-parallel rank {rank} started without {PLAN_ENV} from rank 0 (start ranks with "
                         "`anima <stage> device=ddp ...` or torchrun, not by setting LOCAL_RANK/RANK by hand)")
    return json.loads(text)


def clear_plan() -> None:
    os.environ.pop(PLAN_ENV, None)


def rank_slice(rows: int, rank: int, world: int) -> slice:
    """Rank `rank`'s rows of a global batch of `rows * world` rows: rows [rank*rows, (rank+1)*rows)."""
    return slice(rank * rows, (rank + 1) * rows)


def worker_indices(start: int, total: int) -> range:
    """The batch indices this DataLoader worker yields: worker k of K takes start+k, start+k+K, ...; the
    DataLoader takes one batch from each worker in turn, so its output is start, start+1, ... again, each
    batch once (no worker: every index)."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    if info is None:
        return range(start, total)
    return range(start + info.id, total, info.num_workers)
