"""pretrain / sft / distill: compose data, model and loss terms; fit; log and register the result."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig

from anima.config.stage_schemas import TrainConfig
from anima.config.typed import typed
from anima.errors import AnimaError, ConfigError
from anima.tracking.context import stage_output_dir
from anima.train.result import TrainResult
from anima.train.settings import torch_settings


def run(cfg: DictConfig) -> TrainResult:
    result = train(cfg)
    if result.extra.get("rank"):  # a data-parallel rank > 0: rank 0 reports
        return result
    from rich.console import Console

    c = Console()
    shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items()) if k.startswith(("val/", "persona/")))
    c.print(f"[bold green]✓ {cfg.stage}[/] run {result.run_id}: {shown}")
    if result.version:
        c.print(f"  registered [bold]{result.model_uri}[/]  (chat: anima chat model={result.model_uri})")
    return result


def build_loss_terms(spec: TrainConfig, model, bundle) -> list:
    """The objective: lm first, then the optional terms (kd, persona_guard) when their weight is > 0."""
    from anima.train.losses import LanguageModelingLoss

    loss = spec.loss
    terms: list = [LanguageModelingLoss(loss.lm.weight)]
    if loss.kd.weight > 0 or loss.persona_guard.weight > 0:
        from anima.train.distill_terms import build_extra_terms

        terms.extend(build_extra_terms(spec, model, bundle))
    return terms


def _trainer(spec: TrainConfig, ckpt_dir: Path, logger, callbacks: Sequence, bundle) -> Any:
    from datetime import timedelta

    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    from anima.train.callbacks import (AtomicCheckpointIO, SampleGenerations, StartupTime, Throughput,
                                       step_progress_bar)
    from anima.train.precision import trainer_precision
    from anima.train.schedule import step_limit

    t, device, log_every = spec.trainer, spec.device, spec.tracking.log_every_n_steps
    precision, plugins = trainer_precision(device)
    cbs = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                        auto_insert_metric_name=False, enable_version_counter=False),
        ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False,
                        **({"train_time_interval": timedelta(seconds=t.ckpt_every_s)} if t.ckpt_every_s
                           else {"every_n_train_steps": t.ckpt_every})),
        Throughput(log_every),
        StartupTime(),
        *callbacks,
    ]
    if t.num_samples and bundle.sample_prompts:
        cbs.append(SampleGenerations(bundle.tokenizer, bundle.sample_prompts, t.sample_tokens, spec.sampling,
                                     spec.seed))
    if t.progress == "rich":
        cbs.append(step_progress_bar())
    elif t.progress == "tqdm":
        cbs.append(TQDMProgressBar())
    return L.Trainer(
        accelerator=device.accelerator, devices=device.devices, num_nodes=device.num_nodes,
        strategy=device.strategy, precision=precision,
        use_distributed_sampler=False,  # val sets are sharded exactly (train/val_shard.py), training data too
        max_steps=step_limit(t) or -1, max_time=t.max_time or None,
        accumulate_grad_batches=t.grad_accum, gradient_clip_val=t.grad_clip or None,
        val_check_interval=(timedelta(seconds=t.val_every_s) if t.val_every_s else t.val_every * t.grad_accum),
        check_val_every_n_epoch=None, limit_val_batches=t.val_batches or 1.0, num_sanity_val_steps=0,
        log_every_n_steps=log_every, logger=logger, callbacks=cbs,
        enable_progress_bar=t.progress != "none", enable_model_summary=False,
        deterministic=t.deterministic, plugins=[AtomicCheckpointIO(), *plugins],
        default_root_dir=str(ckpt_dir.parent),
    )


def train(cfg: DictConfig, callbacks: Sequence = (), overrides: Sequence[str] | None = None,
          nested: bool = False) -> TrainResult:
    """Run one training stage end to end. `callbacks` lets tests and sweeps hook into the Lightning loop.

    `cfg` is converted once to its typed view (`TrainConfig`), which the libraries receive; `cfg` itself stays
    for what needs the composed DictConfig: the run's logged config, the resume lookup and hash, config_hash.
    Rank 0 (or the only process) decides, records and registers; other data-parallel ranks follow it."""
    from anima.train.distributed import env_rank
    from anima.train.hardware import check_hardware

    spec = typed(cfg, TrainConfig)
    check_hardware(spec)  # a GPU or bitsandbytes this machine lacks: one line, before any work
    rank = env_rank(spec.device.num_nodes)
    if rank == 0 and not (spec.stage == "distill" and spec.distill.mode == "generate"):
        return _lead(cfg, spec, callbacks, overrides, nested)  # its run opens before torch is imported
    with torch_settings(spec.device):
        if rank > 0:
            return _follow(spec, callbacks, rank)
        from anima.train.seqdistill import generate_stage

        return generate_stage(cfg, spec, overrides=overrides, nested=nested)


def _build(spec: TrainConfig, point=None) -> tuple[Any, Any, str | None, bool, int | None]:
    """(bundle, model, parent URI, compile?, step limit): the same on every rank for a seed."""
    import lightning as L

    from anima.train.initial_model import initial_model
    from anima.train.precision import compile_training, use_training_kernels
    from anima.train.prepare import prepare_data
    from anima.train.schedule import step_limit

    L.seed_everything(spec.seed, workers=True, verbose=False)
    bundle = prepare_data(spec)
    L.seed_everything(spec.seed, workers=True, verbose=False)  # init independent of data prep
    model, parent_uri = initial_model(spec, bundle.tokenizer)
    compile_model = compile_training(spec)
    use_training_kernels(model, spec.device, compile_model, spec.model.max_seq_len)
    if spec.trainer.packing and spec.data.kind == "chat" and spec.model.arch == "hf":
        from anima.train.packing import check_packing_support

        check_packing_support(model, f"model.path={spec.model.path}")  # anima's own Llama builds: tested
    return bundle, model, parent_uri, compile_model, step_limit(spec.trainer)


def _module(spec: TrainConfig, model, bundle, limit: int | None, compile_model: bool):
    from anima.train.module import CausalLMModule
    from anima.train.precision import validation_attention
    from anima.train.schedule import duration_seconds

    budget_s = duration_seconds(spec.trainer.max_time) if spec.trainer.max_time else None
    return CausalLMModule(model, build_loss_terms(spec, model, bundle), spec.optim, limit,
                          val_names=list(bundle.val_sets), chars_per_token=bundle.chars_per_token,
                          time_budget_s=budget_s, compile=compile_model,
                          val_attention=validation_attention(spec.device))


def _follow(spec: TrainConfig, callbacks: Sequence, rank: int) -> TrainResult:
    """A data-parallel rank > 0: rank 0's run, dirs and resume checkpoint; no MLflow, no files of its own."""
    from anima.train.distributed import share_plan

    plan = share_plan(None, rank, spec.device.accelerator)  # under torchrun: waits until rank 0 is ready
    bundle, model, _, compile_model, limit = _build(spec)
    module = _module(spec, model, bundle, limit, compile_model)
    out_dir, ckpt = Path(plan["out_dir"]), plan["ckpt"]
    trainer, val_loaders = _fit(spec, module, bundle, out_dir / "checkpoints", Path(ckpt) if ckpt else None,
                                False, callbacks, limit, rank)
    metrics = _final_metrics(trainer, module, val_loaders)
    return TrainResult(plan["run_id"], out_dir / "model", metrics, extra={"rank": rank})


def _lead(cfg: DictConfig, spec: TrainConfig, callbacks: Sequence, overrides: Sequence[str] | None,
          nested: bool) -> TrainResult:
    from anima.train.distributed import clear_plan, share_plan, torchrun_launched
    from anima.train.resume import CHECKPOINT_TAG, RESUME_HASH_TAG, find_resume, resume_hash
    from anima.tracking.tracker import open_tracker, use_helper

    run_id, ckpt_path, point = None, None, None
    if spec.resume != "none":
        point = find_resume(cfg, spec)  # before any work: a config that differs from the run's fails here
        run_id, ckpt_path = point.run_id, point.ckpt
    single = str(spec.device.devices) == "1" and spec.device.num_nodes == 1 and not torchrun_launched()
    tracker = open_tracker(use_helper(spec.tracking.helper, point is None and not nested, single))
    out_dir = point.ckpt_dir.parent if point else stage_output_dir(cfg)
    ckpt_dir = out_dir / "checkpoints"
    tags = {CHECKPOINT_TAG: str(ckpt_dir), RESUME_HASH_TAG: resume_hash(cfg)}
    if point and point.changed:
        tags["anima.resumed_with"] = ", ".join(f"{k}={new}" for k, (_, new) in point.changed.items())[:5000]
    with tracker.stage_run(cfg, run_id=run_id, overrides=overrides, nested=nested, extra_tags=tags) as active, \
            torch_settings(spec.device):
        from anima.model.build import count_parameters
        from anima.train.logger import HelperRunLogger, StageRunLogger

        bundle, model, parent_uri, compile_model, limit = _build(spec)
        run_id = active.run_id  # the run starts here (with the helper: it has opened meanwhile)
        n_params = count_parameters(model)
        params = tracker.call("anima.tracking.run:run_params", run_id) if point is not None else {}
        if "model.n_parameters" not in params:  # once per run
            _log_run_inputs(tracker, spec, model, bundle, n_params, parent_uri, compile_model)
        module = _module(spec, model, bundle, limit, compile_model)
        if tracker.name == "helper":
            logger = HelperRunLogger(tracker, run_id, spec.tracking.experiment)
        else:
            logger = StageRunLogger(experiment_name=spec.tracking.experiment, tracking_uri=spec.tracking.uri,
                                    run_id=run_id, log_model=False)
        share_plan({"run_id": run_id, "out_dir": str(out_dir), "ckpt": str(ckpt_path) if ckpt_path else None},
                   0, spec.device.accelerator)  # data-parallel ranks > 0 follow this
        try:
            trainer, val_loaders = _fit(spec, module, bundle, ckpt_dir, ckpt_path, logger, callbacks, limit, 0,
                                        record=lambda p: tracker.send("mlflow:log_params", {
                                            k: v for k, v in p.items() if k not in params}))
        finally:
            clear_plan()
        metrics = _final_metrics(trainer, module, val_loaders)
        if spec.tracking.log_checkpoints:
            for name in ("best.ckpt", "last.ckpt"):
                if (ckpt_dir / name).is_file():
                    tracker.send("mlflow:log_artifact", str(ckpt_dir / name), "checkpoints")
        result = _finish(tracker, cfg, spec, module.model, bundle, out_dir, run_id, metrics, parent_uri, n_params,
                         trainer)
    return result


def _log_run_inputs(tracker, spec: TrainConfig, model, bundle, n_params: int, parent_uri: str | None,
                    compile_model: bool) -> None:
    """Once per run (not again on resume): model size, what the run resolved (precision, attention, compile),
    data stats, and the datasets it read (training, prompts, persona seeds) with their lineage tags."""
    from anima.train.precision import attention_implementation, resolve_matmul_precision, resolve_precision

    n_trainable = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values() if p.requires_grad)
    tracker.send("mlflow:log_params", {"model.n_parameters": n_params, "model.n_trainable_parameters": n_trainable,
                       "trainer.schedule_horizon": "time" if spec.trainer.max_time else "steps",
                       "device.precision_used": resolve_precision(spec.device),
                       "device.matmul_precision_used": resolve_matmul_precision(spec.device),
                       "device.attention_used": attention_implementation(spec.device, compile_model),
                       "optim.compile_used": compile_model,
                       **{f"data.{k}": v for k, v in bundle.stats.items()}})
    tracker.send("mlflow:set_tags", {"anima.data_fingerprint": bundle.fingerprint, "anima.parent": parent_uri or "",
                                     "anima.tokenizer": bundle.tokenizer_dir.name})
    log_input = "anima.tracking.datasets:log_dataset_input"
    tracker.send(log_input, bundle.dataset_name, bundle.fingerprint, bundle.dataset_path, "training")
    for name, fp, path, context in bundle.aux.get("inputs", []):  # prompts, persona seeds
        tracker.send(log_input, name, fp, path, context)
    if bundle.lineage:
        tracker.send("mlflow:set_tags", {f"anima.lineage.{k}": v for k, v in bundle.lineage.items()})


def _fit(spec: TrainConfig, module, bundle, ckpt_dir: Path, ckpt_path: Path | None, logger, callbacks: Sequence,
         limit: int | None, rank: int, record: Callable[[dict], Any] | None = None) -> tuple[Any, list]:
    """(trainer, val loaders) after `trainer.fit`; Ctrl-C (ours or Lightning's) ends as KeyboardInterrupt.
    `record` receives the data-parallel layout (world size, per-rank and global batch) before training."""
    from torch.utils.data import DataLoader

    from anima.train.interrupt import StopOnInterrupt, graceful_interrupt
    from anima.train.val_shard import shard_val_sets

    t = spec.trainer
    with graceful_interrupt() as stop:
        trainer = _trainer(spec, ckpt_dir, logger, [*callbacks, StopOnInterrupt(stop)], bundle)
        world = trainer.world_size
        if world > 1 and t.val_every_s:  # Lightning decides time-based validation on each rank's own clock
            raise ConfigError(f"trainer.val_every_s={t.val_every_s} does not work with {world} data-parallel ranks "
                              "(they would validate at different moments); use trainer.val_every")
        if record is not None:
            record({"device.world_size": world, "trainer.batch_size_per_rank": t.batch_size,
                    "trainer.global_batch_size": t.batch_size * world * t.grad_accum})
        total = limit * t.grad_accum if limit else 1 << 62
        train_ds = bundle.make_train(lambda: trainer.global_step * t.grad_accum, total)
        if world > 1:
            _shard_training(train_ds, module, rank, world, spec.device.threads)
        val_sets = shard_val_sets(bundle.val_sets, t.batch_size, t.val_batches, rank, world)
        pin = trainer.strategy.root_device.type == "cuda"  # page-locked batches: async host-to-GPU copies
        val_loaders = [DataLoader(ds, batch_size=t.batch_size, pin_memory=pin) for ds in val_sets.values()]
        try:
            trainer.fit(module, DataLoader(train_ds, batch_size=None, num_workers=t.num_workers, pin_memory=pin),
                        val_loaders, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)
        except SystemExit:
            # Lightning answers Ctrl-C with exit(1): report it as an interrupt so the run ends KILLED,
            # resumable with resume=auto.
            if not trainer.interrupted:
                raise
        finally:
            stop.reinstall()  # Lightning ignores SIGINT after an interrupt
        if trainer.interrupted or stop.requested:
            raise KeyboardInterrupt
    return trainer, val_loaders


def _shard_training(train_ds, module, rank: int, world: int, threads: int | None) -> None:
    """Rank `rank`'s share of every training batch (and of the persona guard's batches): W ranks with batch b
    see together what one process with batch W*b sees."""
    import os

    for batches in (train_ds, *(getattr(term, "batches", None) for term in module.terms)):
        if hasattr(batches, "shard"):
            batches.shard(rank, world)
    if not hasattr(train_ds, "shard"):
        raise ConfigError(f"{type(train_ds).__name__} cannot be split across {world} data-parallel ranks")
    if threads:  # else Lightning's launcher sets torch's threads to cores / ranks, over device.threads
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def _final_metrics(trainer, module, val_loaders: list) -> dict[str, float]:
    """The run's scalar metrics on the final weights (validated once more when the last validation was at an
    earlier step); a non-finite one means training diverged."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if not any(k.startswith("val/") for k in metrics) or module.last_val_step != trainer.global_step:
        trainer.validate(module, val_loaders, verbose=False)  # final numbers on the final weights
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
    for k, v in metrics.items():
        if not math.isfinite(v):
            raise AnimaError(f"training diverged: {k}={v} (lower optim.lr or raise optim.warmup_steps)")
    return metrics


def _finish(tracker, cfg: DictConfig, spec: TrainConfig, model, bundle, out_dir: Path, run_id: str,
            metrics: dict[str, float], parent_uri: str | None, n_params: int, trainer=None) -> TrainResult:
    """Save the final model dir, log it with sample generations, register a version with its lineage tags
    (its config_hash is of the composed `cfg`)."""
    from anima.model.save import save_model_dir
    from anima.train.callbacks import generate_samples, samples_of
    from anima.tracking.registry import metric_tags
    from anima.tracking.run import config_hash

    model = getattr(model, "merged_for_save", lambda: model)()
    meta = {"chat_template": spec.chat.template, "stage": spec.stage, "run_id": run_id,
            "data_fingerprint": bundle.fingerprint, "parent": parent_uri}
    model_dir = save_model_dir(model, bundle.tokenizer_dir, out_dir / "model", meta)
    if bundle.sample_prompts and spec.trainer.num_samples:
        samples = (samples_of(trainer, model) if trainer is not None else None) or generate_samples(
            model, bundle.tokenizer, bundle.sample_prompts, spec.trainer.sample_tokens, spec.sampling,
            spec.seed)  # the final validation's samples when they are of this model at this step
        tracker.send("mlflow:log_text", "\n\n---\n\n".join(samples), "samples/final.md")
    source = tracker.call("anima.tracking.registry:log_model_dir", model_dir)
    result = TrainResult(run_id, model_dir, metrics)
    if spec.registry.register:
        tags = {
            "stage": spec.stage, **metric_tags(metrics), "data_fingerprint": bundle.fingerprint,
            "config_hash": config_hash(cfg), "parent": parent_uri, "teacher": spec.teacher,
            "n_parameters": n_params, "chat_template": spec.chat.template,
            **bundle.lineage,  # datasets used, canonical teacher URI, persona seed set
        }
        mv = tracker.call("anima.tracking.registry:register_model", spec.registry.name, run_id, source, tags,
                          alias=spec.registry.alias)
        result.version, result.registered_name = mv.version, mv.name
    return result
