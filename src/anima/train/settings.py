"""Process-wide torch settings a training run changes, scoped to the run."""

from __future__ import annotations

import contextlib
from typing import Iterator

from anima.config.groups import DeviceConfig
from anima.train.precision import resolve_matmul_precision


@contextlib.contextmanager
def torch_settings(device: DeviceConfig) -> Iterator[None]:
    """Threads and matmul precision for this run only: a library call must not leave them changed for the
    caller (a sweep, a pipeline, tests that compare logits in exact fp32 afterwards)."""
    import logging
    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*treespec.*")  # lightning 2.6 vs torch 2.13 deprecation noise
    # val metrics under data parallelism are reduced before they are logged (CausalLMModule), not by sync_dist
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)  # hardware banners and tips, not progress
    saved = (torch.get_num_threads(), torch.get_float32_matmul_precision())
    if device.threads:
        torch.set_num_threads(device.threads)
    torch.set_float32_matmul_precision(resolve_matmul_precision(device))
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.set_float32_matmul_precision(saved[1])
