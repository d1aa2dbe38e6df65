"""Lightning callbacks: throughput, start-up time, sample generations, atomic checkpoint writes."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from anima.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temp file, fsynced and renamed over the old one (then the dir is fsynced):
    a kill at any moment leaves the previous `last.ckpt` intact and loadable. Loading never unpickles
    arbitrary objects (`weights_only=True`, whatever the caller asks)."""

    #: Test hook: seconds to pause after the temp file is written and before it replaces the checkpoint, so a
    #: test can kill the process mid-write at a known moment.
    DELAY_ENV = "ANIMA_TEST_CKPT_WRITE_DELAY"

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # a fixed temp name: tests/test_kill_resume.py waits for it; sync_dir: the rename survives a power cut
        with atomic_path(path, tmp=path.with_name(f".{path.name}.tmp"), sync_dir=True) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            if delay := float(os.environ.get(self.DELAY_ENV) or 0):
                time.sleep(delay)
            os.fsync(f.fileno())

    def load_checkpoint(self, path: Any, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def peak_memory_gb(device: torch.device) -> float | None:
    """Peak GPU memory torch allocated on `device` since the run started (GiB); None off CUDA."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


class Throughput(L.Callback):
    """Logs train/tokens_per_s over each logging window (tokens actually fed to the model; under data
    parallelism summed over the ranks: the whole run's rate) and, on a GPU, train/peak_mem_gb: the run's peak
    allocated memory so far (the largest rank's), so its last value is the run's peak."""

    def on_train_start(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def __init__(self, every: int):
        self.every = every
        self._tokens = 0
        self._t0: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tokens += int(batch["input_ids"].numel())
        if trainer.global_step % self.every == 0 and self._t0 is not None:
            elapsed = time.perf_counter() - self._t0
            if elapsed > 0:
                pl_module.log("train/tokens_per_s", self._tokens / elapsed, on_step=True, prog_bar=True,
                              sync_dist=trainer.world_size > 1, reduce_fx="sum")
                pl_module.log("train/lr", trainer.optimizers[0].param_groups[0]["lr"], on_step=True)
                peak = peak_memory_gb(pl_module.device)
                if peak is not None:
                    pl_module.log("train/peak_mem_gb", peak, on_step=True, sync_dist=trainer.world_size > 1,
                                  reduce_fx="max")
            self._tokens, self._t0 = 0, time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        """The run's final peak (the last window may end before the last step)."""
        peak, logger = peak_memory_gb(pl_module.device), trainer.logger
        if peak is not None and trainer.global_rank == 0 and logger is not None and hasattr(logger, "experiment"):
            logger.experiment.log_metric(logger.run_id, "train/peak_mem_gb", peak, step=trainer.global_step)


def process_start_time() -> float | None:
    """When this process started (epoch seconds), from the OS; None where psutil cannot tell.

    On Linux from the boot clock that /proc/self/stat counts its start in (exact to a clock tick); psutil's
    create_time rests on /proc/stat's boot time, whole seconds, which made start-up read up to 1 s long (0.3 s
    on the EPYC here)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime: clock ticks since boot
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux: psutil's reading
        pass
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # psutil missing or no access to the process table: start-up goes unmeasured
        return None


_startup_logged = False  # start-up happens once per process: later runs (sweep trials, pipeline steps) skip it


class StartupTime(L.Callback):
    """Logs `startup_s` once per process: seconds from process start to the end of its first optimizer step
    (imports, config, data and tokenizer caches, model, MLflow run, the step itself). The number start-up is
    tuned on (scripts/bench/startup.py); logged straight to the run, so it is not among the final metrics."""

    def __init__(self) -> None:
        self._start_step: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._start_step = trainer.global_step  # a resumed run starts counting from its checkpoint

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        global _startup_logged
        if _startup_logged or self._start_step is None or trainer.global_step <= self._start_step:
            return
        _startup_logged = True
        started = process_start_time()
        logger = trainer.logger
        if started is None or trainer.global_rank != 0 or logger is None or not hasattr(logger, "experiment"):
            return
        logger.experiment.log_metric(logger.run_id, "startup_s", time.time() - started, step=trainer.global_step)


def generate_samples(model, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int, sampling: Any,
                     seed: int) -> list[str]:
    """Sample one continuation per prompt without disturbing the training RNG: with anima's own Llama decode
    where it runs the model (tiny, 3 x 64 tokens on a 2-core Xeon: 0.11 s vs HF generate's 0.48 s, paid at
    every validation of a time-budgeted run), else with `generate`."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(seed)
            sample = _fast_continuation if _plain_llama(model) else _hf_continuation
            outs = [tokenizer.decode(ids, skip_special_tokens=False) + "⟶" +
                    tokenizer.decode(sample(model, tokenizer, ids, max_new_tokens, sampling, seed),
                                     skip_special_tokens=True) for ids in prompts]
    finally:
        model.train(was_training)
    return outs


def _plain_llama(model) -> bool:
    """A bare Llama whose weights are the plain Linear weights anima's decode reads (not a LoRA/QLoRA wrapper)."""
    from transformers import LlamaForCausalLM

    from anima.generation.backends import fast_llama_unsupported

    return (type(model) is LlamaForCausalLM and fast_llama_unsupported(model) is None
            and all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear)))


def _hf_continuation(model, tokenizer, ids: list[int], max_new_tokens: int, sampling: Any, seed: int) -> list[int]:
    x = torch.tensor([ids], device=model.device)
    y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                       do_sample=sampling.temperature > 0, temperature=sampling.temperature or None,
                       top_p=sampling.top_p, top_k=sampling.top_k or None, pad_token_id=tokenizer.pad_token_id)
    return y[0, len(ids):].tolist()


def _fast_continuation(model, tokenizer, ids: list[int], max_new_tokens: int, sampling: Any, seed: int
                       ) -> list[int]:
    from anima.generation.backends import FastLlamaBackend
    from anima.generation.sampling import SamplingParams, make_generator, sample_next

    params = SamplingParams(temperature=float(sampling.temperature), top_p=float(sampling.top_p),
                            top_k=int(sampling.top_k or 0), max_new_tokens=max_new_tokens).validate()
    eos = model.generation_config.eos_token_id
    stop = set(eos if isinstance(eos, list) else [eos]) - {None}
    n = max(0, min(max_new_tokens, int(model.config.max_position_embeddings) - len(ids)))  # what fits the context
    backend = FastLlamaBackend(model, max_positions=len(ids) + n)
    generator, out = make_generator(seed), []
    logits = backend.forward(ids)
    while len(out) < n:
        token = sample_next(logits, params, generator)
        if token in stop:
            break
        out.append(token)
        if len(out) < n:
            logits = backend.forward([token])
    return out


class SampleGenerations(L.Callback):
    """After each validation, log a few sample generations as samples/step_XXXXXX.md (rank 0 only)."""

    def __init__(self, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int, sampling: Any, seed: int):
        self.tokenizer, self.prompts = tokenizer, list(prompts)
        self.max_new_tokens, self.sampling, self.seed = max_new_tokens, sampling, seed
        self.last: list[str] = []
        self.last_of: tuple[Any, int, str] | None = None  # (model, global step, device) `last` was sampled from

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self.prompts or trainer.global_rank != 0:
            return
        self.last = generate_samples(pl_module.model, self.tokenizer, self.prompts, self.max_new_tokens,
                                     self.sampling, self.seed)
        self.last_of = (pl_module.model, trainer.global_step, str(pl_module.model.device))
        if trainer.logger is not None and hasattr(trainer.logger, "experiment"):
            text = "\n\n---\n\n".join(self.last)
            trainer.logger.experiment.log_text(trainer.logger.run_id, text,
                                               f"samples/step_{trainer.global_step:06d}.md")


def samples_of(trainer, model) -> list[str] | None:
    """The samples the last validation generated, when they are the final model's: `model` is the very module
    sampled, on the same device, at the trainer's final step. Sampling is seeded, so generating again (2 x
    num_samples x sample_tokens forward passes, most of a short run's tail) would write the same text."""
    for cb in trainer.callbacks:
        if isinstance(cb, SampleGenerations) and cb.last_of is not None:
            sampled, step, device = cb.last_of
            if sampled is model and step == trainer.global_step and device == str(model.device):
                return list(cb.last)
    return None


def step_progress_bar():
    """Lightning's rich bar, labelled in optimizer steps (anima trains by steps, not epochs)."""
    from lightning.pytorch.callbacks import RichProgressBar

    class StepProgressBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            steps = self.trainer.max_steps
            return f"train · {steps} steps" if steps and steps > 0 else "train · until max_time"

        def get_metrics(self, trainer, pl_module):
            items = super().get_metrics(trainer, pl_module)
            items.pop("v_num", None)  # the MLflow run id, not a version number
            return items

    return StepProgressBar(leave=True)
