"""anima retrain: fine-tune the champion on chat feedback and register the result as a candidate.

It is `anima sft` with its inputs decided here: start from `model` (default the champion), train on the
feedback file (approved replies and corrections, data source kind=feedback), replay the starting model's own
training data (`data.rehearsal.source=<model URI>`) so the model does not forget, keep the starting model's
architecture and tokenizer, and register a new version of the same registered model, aliased `candidate`
and tagged with the feedback fingerprint. The new version is not promoted: `anima eval` compares it with the
champion and `anima promote` moves the alias.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from anima.config.retrain import RetrainStageConfig
from anima.config.typed import typed
from anima.errors import DataError

FEEDBACK_TAG = "feedback_fingerprint"


@dataclass
class FeedbackSummary:
    path: Path
    records: int
    corrupt: int
    examples: int  # approved + corrected: what SFT can learn from
    fingerprint: str


def summarize_feedback(path: Path) -> FeedbackSummary:
    """Count usable records (corrupt lines skipped and counted); fingerprint what will be trained on."""
    from anima.data.feedback import feedback_to_chat_examples, read_feedback
    from anima.fingerprint import hash_obj

    records, corrupt = read_feedback(path)
    examples = feedback_to_chat_examples(records)
    return FeedbackSummary(path, len(records), corrupt, len(examples),
                           hash_obj([ex["messages"] for ex in examples]))


def model_overrides(model_dir: Path, registered_name: str | None) -> list[str]:
    """sft `model.*` keys that rebuild exactly the starting model's architecture (checked by init_from)."""
    hf_config = json.loads((model_dir / "config.json").read_text())  # the HF model config
    meta_path = model_dir / "anima.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    rope = (hf_config.get("rope_parameters") or {}).get("rope_theta", hf_config.get("rope_theta", 10000.0))
    name = registered_name[len("anima-"):] if registered_name and registered_name.startswith("anima-") else None
    out = [
        "model.arch=llama",
        f"model.dim={hf_config['hidden_size']}",
        f"model.n_layers={hf_config['num_hidden_layers']}",
        f"model.n_heads={hf_config['num_attention_heads']}",
        f"model.n_kv_heads={hf_config.get('num_key_value_heads') or hf_config['num_attention_heads']}",
        f"model.hidden_dim={hf_config['intermediate_size']}",
        f"model.vocab_size={hf_config['vocab_size']}",
        f"model.max_seq_len={hf_config['max_position_embeddings']}",
        f"model.rope_theta={float(rope)}",
        f"model.norm_eps={float(hf_config.get('rms_norm_eps', 1e-5))}",
        f"model.tie_embeddings={str(bool(hf_config.get('tie_word_embeddings', False))).lower()}",
    ]
    if name:
        out.append(f"model.name={name}")
    if meta.get("chat_template"):
        out.append(f"chat.template={meta['chat_template']}")
    return out


def rehearsal_source(spec: RetrainStageConfig, resolved: Any) -> str | None:
    """What to replay. The default (the starting model's own data) falls back to none, with a note, when that
    model was not trained on a chat dataset (e.g. a pretrained-only champion); an explicit source must work,
    so it is checked here, before any training, and fails naming the retrain key that was set."""
    src, ratio = spec.retrain.rehearsal_source, spec.retrain.rehearsal_ratio
    if not src or ratio <= 0:
        return None
    explicit = src != spec.model
    from anima.data.dataset import resolve_rehearsal
    from anima.errors import AnimaError

    try:
        built = resolve_rehearsal(src if explicit else resolved.canonical_uri, spec.paths, spec.tracking)
        if built.kind != "chat":
            raise DataError(f"its training data {built.ref} is {built.kind}, not chat")
    except AnimaError as e:
        why = str(e).split(": ", 1)[-1]
        if explicit:
            raise DataError(f"retrain.rehearsal_source={src}: no chat data to replay ({why}); name a chat dataset "
                            f"or a chat-trained model, or set retrain.rehearsal_source=null") from None
        print(f"note: no rehearsal: {resolved.canonical_uri} has no chat training data to replay "
              f"({why}); training on the feedback alone")
        return None
    return src if explicit else resolved.canonical_uri


def sft_overrides(spec: RetrainStageConfig, resolved: Any, feedback: FeedbackSummary) -> list[str]:
    """The overrides retrain composes conf/sft.yaml with (logged on the run as its command line)."""
    r, tracking = spec.retrain, spec.tracking
    out = [
        f"init_from={resolved.canonical_uri}",
        *model_overrides(resolved.path, resolved.name),
        "data.kind=chat",
        "data.name=feedback",
        "data.persona=null",
        "data.on_error=skip",  # a corrupt feedback line (a crash mid-write, a hand edit) is skipped and counted
        f"data.split.val={r.val_fraction}",
        "data.split.test=0.0",
        f"registry.name={spec.registry.name}",
        f"registry.alias={spec.registry.alias}" if spec.registry.alias else "registry.alias=null",
        f"paths.root={spec.paths.root}",
        f"tracking.uri={tracking.uri}",
        f"tracking.artifact_root={tracking.artifact_root}" if tracking.artifact_root
        else "tracking.artifact_root=null",
        f"tracking.experiment={tracking.experiment}",
        f"seed={spec.seed}",
    ]
    rehearsal = rehearsal_source(spec, resolved)
    if rehearsal:
        out += [f"data.rehearsal.source={rehearsal}", f"data.rehearsal.ratio={r.rehearsal_ratio}"]
    else:
        out += ["data.rehearsal.source=null", "data.rehearsal.ratio=0.0"]
    if r.max_steps:
        out.append(f"trainer.max_steps={r.max_steps}")
    if r.lr:
        out.append(f"optim.lr={r.lr}")
    if spec.run_name:
        out.append(f"run_name={spec.run_name}")
    return out + list(r.sft_overrides)


def compose_sft(spec: RetrainStageConfig, resolved: Any, feedback: FeedbackSummary) -> tuple[DictConfig, list[str]]:
    from anima.config.compose import compose, schema_for
    from anima.config.validate import validate

    overrides = sft_overrides(spec, resolved, feedback)
    sft_cfg = compose("sft", overrides, validate=False)  # validated below, once its sources are the feedback
    # The feedback file replaces the sft default's sources (an override would merge into them, and a
    # structured config refuses `~data.sources`), so it is assigned after composition.
    from anima.config.data import SourceConfig

    sft_cfg.data.sources = {"feedback": SourceConfig(kind="feedback", path=str(feedback.path))}
    validate(sft_cfg, schema_for("sft"))
    return sft_cfg, [*overrides, f"data.sources={{feedback: {{kind: feedback, path: '{feedback.path}'}}}}"]


def retrain(cfg: DictConfig):
    """Train and register the candidate; returns the sft stage's TrainResult. `cfg` is converted once to
    `RetrainStageConfig`; the sft config it trains with is composed from that, not edited from `cfg`."""
    from mlflow import MlflowClient

    from anima.model.resolve import resolve_model
    from anima.stages.train import train
    from anima.tracking.context import current
    from anima.tracking.registry import tag_version

    spec = typed(cfg, RetrainStageConfig)
    opts = spec.retrain
    path = Path(opts.feedback).expanduser()
    if not path.is_file():
        raise DataError(f"retrain.feedback={path}: no feedback yet; rate replies in `anima chat` (y, or n and a "
                        f"better reply) first")
    fb = summarize_feedback(path)
    if fb.corrupt:
        print(f"note: skipped {fb.corrupt} corrupt line(s) in {path}")
    if fb.examples < opts.min_examples:
        raise DataError(f"{path}: {fb.examples} usable feedback example(s) ({fb.records} records, {fb.corrupt} "
                        f"corrupt); retrain.min_examples={opts.min_examples}")
    resolved = resolve_model(spec.model, spec.tracking)
    sft_cfg, overrides = compose_sft(spec, resolved, fb)
    rehearsal = next((o.split("=", 1)[1] for o in overrides if o.startswith("data.rehearsal.source=")), "null")
    print(f"retrain: {fb.examples} feedback example(s) (fingerprint {fb.fingerprint}) on top of "
          f"{resolved.canonical_uri}; rehearsal: {rehearsal if rehearsal != 'null' else 'none'}")
    result = train(sft_cfg, overrides=overrides)
    client = MlflowClient()
    tags = {"anima.retrain.feedback_fingerprint": fb.fingerprint, "anima.retrain.feedback_examples": str(fb.examples),
            "anima.retrain.feedback_path": str(path), "anima.retrain.from": resolved.canonical_uri,
            "anima.retrain.command": " ".join(["anima retrain", *current().overrides])}
    for k, v in tags.items():
        client.set_tag(result.run_id, k, v)
    if result.version:
        tag_version(result.registered_name, result.version,
                    {FEEDBACK_TAG: fb.fingerprint, "retrained_from": resolved.canonical_uri})
    return result


def run(cfg: DictConfig):
    result = retrain(cfg)
    shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items()) if k.startswith(("val/", "persona/")))
    print(f"✓ retrain run {result.run_id}: {shown}")
    if result.version:
        alias = f" (@{cfg.registry.alias})" if cfg.registry.alias else ""
        print(f"  registered {result.model_uri}{alias}; compare: anima eval model={result.model_uri}; "
              f"promote: anima promote registry.name={result.registered_name} version={result.version} alias=champion")
    return result
