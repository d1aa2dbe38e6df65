"""The one LightningModule behind pretrain, sft and distill: a causal LM and a weighted list of loss terms."""

from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer

from anima.config.groups import OptimConfig
from anima.train.losses import IGNORE_INDEX, LossTerm, token_cross_entropy
from anima.train.optimizers import build_optimizer
from anima.train.precision import base_model, set_attention
from anima.train.schedule import lr_factor


def fused_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """(decoder, lm_head) when the logits are exactly `lm_head(decoder(...).last_hidden_state)` — a plain
    bias-free linear head with no soft-capping or scaling (Llama and friends, LoRA on the body included) — so
    the LM loss can be fused with the head; None otherwise (the loss then goes through the logits)."""
    base = base_model(model)
    get_decoder, head = getattr(base, "get_decoder", None), getattr(base, "get_output_embeddings", lambda: None)()
    config = getattr(base, "config", None)
    if get_decoder is None or type(head) is not torch.nn.Linear or head.bias is not None or config is None:
        return None
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    return get_decoder(), head


class CausalLMModule(L.LightningModule):
    """Wraps a Hugging Face causal LM. Validation reports loss, perplexity and (for text) bits per character
    for each named validation set: `val/*` for the first, `<name>/*` for the others (e.g. `persona/ppl`)."""

    def __init__(self, model: torch.nn.Module, terms: Sequence[LossTerm], optim: OptimConfig, max_steps: int | None,
                 val_names: Sequence[str] = ("val",), chars_per_token: dict[str, float] | None = None,
                 time_budget_s: float | None = None, compile: bool = False, val_attention: str | None = None):
        super().__init__()
        self.model = model
        self.terms = list(terms)
        self.optim_cfg = optim
        self.max_steps = max_steps
        self.time_budget_s = time_budget_s  # `trainer.max_time` in seconds: the schedule's horizon by time
        self.last_val_step: int | None = None
        self.val_names = list(val_names)
        self.chars_per_token = chars_per_token or {}
        self._head = fused_head(model)
        self._decoder = self._head[0] if self._head else None
        self._forward, self._train_decoder = model, self._decoder
        self._compiled = compile  # the fused LM-head loss too
        if compile:  # the training forward only (validation's eval mode would recompile); plain attributes,
            object.__setattr__(self, "_forward", torch.compile(model))  # not submodules: no duplicate keys
            if self._decoder is not None:
                object.__setattr__(self, "_train_decoder", torch.compile(self._decoder))
        self._val_sums: dict[str, list[float]] = {}
        self._val_attention = val_attention  # validation's attention kernel, when it differs from training's
        self._train_attention: str | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits. Packed rows carry `position_ids` that restart per sequence and no `attention_mask`:
        transformers then builds a block-diagonal causal mask, so attention stays inside each sequence."""
        forward = self._forward if self.training else self.model
        return forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        active = [term for term in self.terms if term.weight != 0]
        hidden = logits = None
        if self._head and all(getattr(t, "fusable", False) or not getattr(t, "needs_step_logits", True)
                              for t in active):
            hidden = self._hidden(batch)
        else:
            logits = self(batch["input_ids"], batch.get("attention_mask"), batch.get("position_ids"))
        total = torch.zeros((), device=batch["input_ids"].device)
        sync = self._world() > 1  # the mean over ranks: the curve of one process with the global batch
        for term in active:
            if hidden is not None and getattr(term, "fusable", False):
                value = term.from_hidden(batch, hidden, self._head[1].weight, compiled=self._compiled)
            else:
                value = term(self.global_step, batch, logits, self)
            if value is None:
                continue
            total = total + term.weight * value
            self.log(f"train/{term.name}", value.detach(), on_step=True, on_epoch=False, sync_dist=sync)
        self.log("train/loss", total.detach(), on_step=True, on_epoch=False, prog_bar=True, sync_dist=sync)
        return total

    # -- validation: exact token-weighted means over the whole (limited) split ---------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_sums = {name: [0.0, 0.0] for name in self.val_names}
        if self._val_attention:  # eager <-> sdpa: the same weights and result
            self._train_attention = set_attention(self.model, self._val_attention)

    def _hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        decoder = self._train_decoder if self.training else self._decoder
        return decoder(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                             position_ids=batch.get("position_ids"), use_cache=False).last_hidden_state

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._head:  # the LM head in fp32 under bf16 autocast: no bf16 rounding of the logits themselves
            hidden = self._hidden(batch)
            with torch.autocast(hidden.device.type, enabled=False):
                logits = torch.nn.functional.linear(hidden.float(), self._head[1].weight.float())
        else:
            logits = self(batch["input_ids"], batch.get("attention_mask"), batch.get("position_ids"))
        labels = batch["labels"]
        n = int((labels != IGNORE_INDEX).sum())
        if n == 0:
            return
        loss_sum = token_cross_entropy(logits, labels, reduction="sum")
        sums = self._val_sums[self.val_names[dataloader_idx]]
        sums[0] += float(loss_sum)
        sums[1] += n

    def _world(self) -> int:
        trainer = self._trainer
        return trainer.world_size if trainer is not None else 1

    def _reduced_val_sums(self) -> dict[str, list[float]]:
        """The token-weighted sums over every rank's share of the val rows (see train/val_shard.py): the sums
        one process scoring all of them would have."""
        if self._world() <= 1 or not self._val_sums:
            return self._val_sums
        names = list(self._val_sums)
        local = torch.tensor([self._val_sums[n] for n in names], dtype=torch.float64, device=self.device)
        total = self.trainer.strategy.reduce(local, reduce_op="sum")
        return {n: [float(total[i, 0]), float(total[i, 1])] for i, n in enumerate(names)}

    def on_validation_epoch_end(self) -> None:
        for name, (loss_sum, n) in self._reduced_val_sums().items():
            if n == 0:
                continue
            loss = loss_sum / n
            self.log(f"{name}/loss", loss, prog_bar=name == self.val_names[0], add_dataloader_idx=False)
            self.log(f"{name}/ppl", math.exp(min(loss, 50.0)), add_dataloader_idx=False)
            if name in self.chars_per_token:
                bpc = loss / math.log(2) / self.chars_per_token[name]
                self.log(f"{name}/bpc", bpc, prog_bar=name == self.val_names[0], add_dataloader_idx=False)
        if not self.trainer.sanity_checking:
            self.last_val_step = self.global_step
        if self._train_attention:
            set_attention(self.model, self._train_attention)
            self._train_attention = None

    # -- optimisation -------------------------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.optim_cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        fused = {"auto": None, "true": True, "false": False}[cfg.fused.lower()]  # `true` from argv arrives as "True"
        if fused is None:  # not under fp16's GradScaler: Lightning cannot clip a fused optimizer's gradients there
            fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params) and \
                str(getattr(self._trainer, "precision", "")) not in ("16-mixed", "16")
        optimizer = build_optimizer(self.model, cfg, fused)
        factor = partial(lr_factor, warmup=cfg.warmup_steps, total=self.max_steps, schedule=cfg.schedule,
                         min_ratio=cfg.min_lr_ratio)
        if self.time_budget_s:
            step_factor, budget = factor, self.time_budget_s

            def factor(step: int) -> float:  # a plain function: LambdaLR keeps it out of the checkpoint
                return step_factor(step, elapsed_s=self.train_seconds(), budget_s=budget)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train_seconds(self) -> float:
        """Training time so far on the clock that enforces `trainer.max_time` (Lightning's Timer: from the start
        of the training loop, so start-up is not counted; validation inside the fit is, since the Timer counts
        it too and the floor must come exactly when the run stops; restored from the checkpoint on resume)."""
        trainer = self._trainer
        timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None) if trainer else None
        elapsed = float(timer.time_elapsed("train")) if timer else 0.0
        if trainer is not None and trainer.world_size > 1:  # rank 0's clock: the LR must agree on every rank
            elapsed = float(trainer.strategy.broadcast(elapsed, src=0))
        return elapsed

    # -- RNG state rides along in checkpoints so a resumed run samples exactly as an uninterrupted one ---
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["anima_rng"] = {"torch": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("anima_rng")
        if state:
            torch.set_rng_state(state["torch"])
