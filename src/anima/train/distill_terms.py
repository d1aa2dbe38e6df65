"""The optional loss terms next to `lm`: `kd` (distillation from a frozen teacher) and `persona_guard`.

Both follow the LossTerm protocol of `anima.train.losses`. Reference models (teacher, the guard's frozen
starting copy) are plain attributes, not submodules: they are never optimised, checkpointed or merged.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from anima.config.stage_schemas import TrainConfig
from anima.errors import ConfigError, DataError, ModelError
from anima.train.divergences import KINDS, distill_loss
from anima.train.losses import IGNORE_INDEX, token_cross_entropy


def _to_device(model, device: torch.device):
    p = next(model.parameters(), None)
    if p is not None and p.device != device:
        model.to(device)
    return model


def _forward(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of a reference model on a padded or packed batch (packed: position_ids, no attention_mask)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                 position_ids=batch.get("position_ids"), use_cache=False).logits


class DistillationLoss:
    """`kd`: divergence between temperature-scaled teacher and student distributions on the target tokens
    (assistant tokens on chat data), times T^2. The teacher is frozen, in eval mode and run under no_grad.

    With ``cache_top_k = k > 0`` the teacher is represented by its k largest logits per position (the rest
    -inf), kept on CPU per training example: from the second epoch on, an example's teacher pass is skipped.
    The same top-k teacher is used on first sight too, so a run's loss does not depend on cache hits. For
    reverse KL the student is restricted to the teacher's top-k support (otherwise KL(p_S || p_T) is infinite).
    """

    name = "kd"

    def __init__(self, teacher, weight: float, kind: str = "forward_kl", temperature: float = 1.0,
                 beta: float = 0.5, cache_top_k: int = 0):
        if kind not in KINDS:
            raise ConfigError(f"loss.kd.kind={kind}: expected one of {', '.join(KINDS)}")
        self.teacher, self.weight, self.kind = teacher, float(weight), kind
        self.temperature, self.beta, self.top_k = float(temperature), float(beta), int(cache_top_k)
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = self.misses = 0

    def _teacher_full(self, batch: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _forward(self.teacher, batch)[mask].float()

    def _teacher_topk(self, batch: dict[str, torch.Tensor], mask: torch.Tensor, vocab: int) -> torch.Tensor:
        if "example_index" not in batch:
            raise ConfigError("loss.kd.cache_top_k needs chat data (data.kind=chat): text batches have no example ids")
        rows = batch["example_index"].tolist()
        missing = [i for i, r in enumerate(rows) if r not in self.cache]
        self.hits += len(rows) - len(missing)
        self.misses += len(missing)
        if missing:
            with torch.no_grad():
                full = _forward(self.teacher, batch).float()
            k = min(self.top_k, full.size(-1))
            for i in missing:
                vals, idx = full[i][mask[i]].topk(k, dim=-1)
                self.cache[rows[i]] = (vals.cpu(), idx.to(torch.int32).cpu())
        parts_v, parts_i = zip(*(self.cache[r] for r in rows))
        vals = torch.cat(parts_v).to(mask.device)
        idx = torch.cat(parts_i).to(device=mask.device, dtype=torch.long)
        out = torch.full((vals.size(0), vocab), float("-inf"), device=mask.device)
        return out.scatter_(1, idx, vals)

    def __call__(self, step: int, batch: dict[str, torch.Tensor], logits: torch.Tensor,
                 module: Any) -> Optional[torch.Tensor]:
        _to_device(self.teacher, logits.device)
        mask = batch["labels"] != IGNORE_INDEX
        if not bool(mask.any()):
            raise DataError("a training batch has no target tokens (assistant mask all zeros)")
        student = logits[mask]
        teacher = self._teacher_topk(batch, mask, student.size(-1)) if self.top_k else \
            self._teacher_full(batch, mask)
        if teacher.size(-1) != student.size(-1):
            raise ModelError(f"teacher logits have {teacher.size(-1)} entries but the student's have "
                             f"{student.size(-1)}: vocabularies differ (use distill.mode=sequence)")
        if self.top_k and self.kind == "reverse_kl":
            student = student.masked_fill(torch.isinf(teacher), float("-inf"))
        return distill_loss(self.kind, teacher, student, self.temperature, self.beta)


class PersonaGuardLoss:
    """`persona_guard`: every ``every`` optimizer steps (steps 0, N, 2N, ...), cross-entropy on a batch of
    persona-seed conversations, plus ``kl_weight`` x KL(p_start || p_model) to a frozen copy of the starting
    model on the same batch. Persona batch k is a pure function of (seed, k), so resumed runs see the same ones.
    Returns None on the other steps (the term then adds nothing).
    """

    name = "persona_guard"
    needs_step_logits = False  # runs its own forward on persona batches

    def __init__(self, batches, weight: float, every: int, kl_weight: float = 0.0, reference=None):
        if every < 1:
            raise ConfigError(f"loss.persona_guard.every={every}: must be >= 1")
        if kl_weight > 0 and reference is None:
            raise ConfigError("loss.persona_guard.kl_weight > 0 needs the frozen starting model")
        self.batches, self.weight, self.every = batches, float(weight), int(every)
        self.kl_weight, self.reference = float(kl_weight), reference

    def fires(self, step: int) -> bool:
        return step % self.every == 0

    def __call__(self, step: int, batch: dict[str, torch.Tensor], logits: torch.Tensor,
                 module: Any) -> Optional[torch.Tensor]:
        if not self.fires(step):
            return None
        # logits is None when the module fused its LM loss with the head (this term never reads them)
        device = logits.device if logits is not None else next(module.parameters()).device
        pb = {k: v.to(device) for k, v in self.batches.batch_at(step // self.every).items()
              if k != "example_index"}
        out = module(pb["input_ids"], pb["attention_mask"])
        ce = token_cross_entropy(out, pb["labels"])
        total = ce
        if self.kl_weight > 0:
            _to_device(self.reference, device)
            mask = pb["labels"] != IGNORE_INDEX
            with torch.no_grad():
                ref = _forward(self.reference, pb)[mask]
            kl = distill_loss("forward_kl", ref, out[mask], 1.0)
            total = ce + self.kl_weight * kl
            _log(module, "train/persona_guard_kl", kl)
        _log(module, "train/persona_guard_ce", ce)
        return total


def _log(module: Any, name: str, value: torch.Tensor) -> None:
    """Straight to the logger, at this step only: Lightning's `self.log` would repeat the last value on the
    steps where the guard does not fire."""
    if getattr(module, "_trainer", None) is None or getattr(module, "logger", None) is None:
        return
    module.logger.log_metrics({name: float(value.detach())}, step=int(module.global_step))


def build_extra_terms(spec: TrainConfig, model, bundle) -> list:
    """kd and persona_guard terms for the weights > 0 in `spec.loss` (the teacher's vocabulary is checked here,
    before training starts, as well as when the data is prepared)."""
    terms: list = []
    kd, guard = spec.loss.kd, spec.loss.persona_guard
    if kd.weight > 0:
        if spec.stage == "distill" and spec.distill.mode != "logits":
            raise ConfigError(f"loss.kd.weight={kd.weight} needs distill.mode=logits (mode {spec.distill.mode} "
                              f"trains on teacher replies with lm only; set loss.kd.weight=0)")
        if not spec.teacher:
            raise ConfigError(f"loss.kd.weight={kd.weight} needs teacher=<model URI>")
        if kd.cache_top_k and spec.data.kind != "chat":
            raise ConfigError("loss.kd.cache_top_k needs chat data (data.kind=chat): text batches have no example ids")
        from anima.model.resolve import resolve_model
        from anima.train.teacher import check_shared_vocab, load_frozen

        resolved = resolve_model(spec.teacher, spec.tracking)
        check_shared_vocab(resolved.path, spec.teacher, bundle.tokenizer, int(model.config.vocab_size))
        terms.append(DistillationLoss(load_frozen(resolved.path), kd.weight, kd.kind, kd.temperature, kd.jsd_beta,
                                      kd.cache_top_k))
    if guard.weight > 0:
        chat = bundle.aux.get("chat")
        if chat is None or chat.persona_train is None:
            raise ConfigError(f"loss.persona_guard.weight={guard.weight} needs chat data with a persona set "
                              f"(data.kind=chat and data.persona, or loss.persona_guard.data)")
        from anima.train.chat_rows import ChatBatches
        from anima.train.teacher import frozen_copy

        batches = ChatBatches(chat.persona_train, spec.trainer.batch_size, chat.pad_id, spec.seed + 1)
        reference = frozen_copy(model) if guard.kl_weight > 0 else None
        terms.append(PersonaGuardLoss(batches, guard.weight, guard.every, guard.kl_weight, reference))
    return terms
