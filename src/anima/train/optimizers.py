"""Optimizers by `optim.name`: AdamW everywhere, or Muon on the hidden matrices with AdamW for the rest.

Muon (torch.optim.Muon) orthogonalises each hidden weight matrix's momentum by a few Newton-Schulz steps; at
a fixed time budget it learns more per step than AdamW. torch runs those steps in bf16 always; a CPU without
bf16 units (AMD EPYC Zen 2 here) emulates bf16 matmuls ~60x slower than fp32 ones, which made a `tiny` step
take 3 s there, so `Muon` below runs them in bf16 only where the hardware has bf16 units, else in fp32.
Muon applies to 2-D hidden weights only, so the embedding (tied to the output head), norms and biases stay on
AdamW. Lightning's automatic optimisation wants one optimizer, so `MuonAdamW` presents both as one: one list
of param groups (the LR schedule scales them all), one state, one state dict.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, MutableMapping
from typing import Any, Callable

import torch

from anima.config.groups import OptimConfig
from anima.errors import ConfigError
from anima.train.precision import cpu_has_bf16_matrix_units


def adamw(params: list[torch.nn.Parameter], cfg: OptimConfig, fused: bool | None) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices only (not on norms or biases)."""
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)


def _closure_loss(closure: Callable[[], float] | None) -> float | None:
    """The loss of an optimizer's `closure` (with gradients on), as torch's optimizers evaluate it."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """bf16 where `device` multiplies bf16 matrices natively (as torch's Muon assumes), fp32 elsewhere."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16_matrix_units() else torch.float32


def orthogonalize(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz iteration (the same operations, so bf16 results match it bit
    for bit), computed in `dtype`, on one matrix (r, c) or on a stack of same-shape matrices (n, r, c)."""
    a, b, c = coefficients
    x = update.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    norm = x.norm() if x.dim() == 2 else x.norm(dim=(-2, -1), keepdim=True)
    x = x / norm.clamp(min=eps)  # not in place: in fp32 `x` may be the momentum buffer itself
    fused_mm = torch.addmm if x.dim() == 2 else torch.baddbmm
    for _ in range(steps):
        gram = x @ x.mT
        x = fused_mm(x, fused_mm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class Muon(torch.optim.Muon):
    """torch.optim.Muon (same param groups and state, so its checkpoints load) with the Newton-Schulz steps in
    `ns_dtype`, run once per distinct matrix shape on the stacked updates: a small model's ~30 matrices cost
    ~30 chains of tiny matmuls one by one (52 ms a step for `tiny` on a 2-core Xeon) and 3 batched ones
    together (19 ms). Only `adjust_lr_fn="match_rms_adamw"` is used: Muon's update gets AdamW's RMS, one lr
    fits both."""

    def __init__(self, params: list[dict], *, lr: float, momentum: float, ns_dtype: torch.dtype) -> None:
        super().__init__(params, lr=lr, momentum=momentum, adjust_lr_fn="match_rms_adamw")
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, momentum = float(group["lr"]), group["momentum"]
            by_shape: dict[torch.Size, list[tuple[torch.nn.Parameter, torch.Tensor]]] = {}
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad, state = param.grad, self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                by_shape.setdefault(param.shape, []).append((param, update))
            for shape, pairs in by_shape.items():
                updates = [u for _, u in pairs]
                ortho = orthogonalize(torch.stack(updates) if len(updates) > 1 else updates[0],
                                      group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
                step_size = lr * (0.2 * math.sqrt(max(shape[:2])))
                for (param, _), update in zip(pairs, ortho if len(updates) > 1 else [ortho]):
                    param.mul_(1 - lr * group["weight_decay"])
                    param.add_(update, alpha=-step_size)
        return loss


class _JointState(MutableMapping):
    """Both optimizers' per-parameter state as one mapping, each key read from and written to its owner's
    (a ChainMap would not do: reading a missing key from a defaultdict inserts it into the first map)."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        self.muon, self.adamw = muon, adamw
        self.muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}

    def _owner(self, key: Any) -> dict:
        return self.muon.state if id(key) in self.muon_ids else self.adamw.state

    def __getitem__(self, key: Any) -> Any:
        return self._owner(key)[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._owner(key)[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._owner(key)[key]

    def __iter__(self) -> Iterator[Any]:
        yield from self.muon.state
        yield from self.adamw.state

    def __len__(self) -> int:
        return len(self.muon.state) + len(self.adamw.state)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for `hidden` (2-D matrices inside the blocks), AdamW for `other`, stepped together."""

    def __init__(self, hidden: list[torch.nn.Parameter], other: list[torch.nn.Parameter], cfg: OptimConfig,
                 fused: bool | None) -> None:
        self.muon = Muon([{"params": hidden, "weight_decay": cfg.weight_decay}], lr=cfg.lr,
                         momentum=cfg.muon_momentum, ns_dtype=newton_schulz_dtype(hidden[0].device))
        self.adamw = adamw(other, cfg, fused)
        super().__init__([*hidden, *other], {"lr": cfg.lr})
        self.param_groups = [*self.muon.param_groups, *self.adamw.param_groups]  # the same dicts: one schedule
        self.state = _JointState(self.muon, self.adamw)  # type: ignore[assignment]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = _closure_loss(closure)
        self.muon.step()
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = [*self.muon.param_groups, *self.adamw.param_groups]
        self.state = _JointState(self.muon, self.adamw)  # type: ignore[assignment]


def hidden_matrices(model: torch.nn.Module) -> set[int]:
    """Ids of the 2-D weights inside the transformer blocks (not the embedding / output head)."""
    excluded = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    excluded |= {id(p) for n, p in model.named_parameters() if n.endswith("lm_head.weight")}
    return {id(p) for p in model.parameters() if p.dim() == 2 and id(p) not in excluded}


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, fused: bool | None) -> torch.optim.Optimizer:
    """The optimizer `cfg.name` names over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "muon":
        hidden = hidden_matrices(model)
        if not any(id(p) in hidden for p in params):
            raise ConfigError("optim=muon: the model has no trainable 2-D block weights for Muon (flattened by "
                              "a sharding strategy, or frozen); use optim=adamw")
        return MuonAdamW([p for p in params if id(p) in hidden], [p for p in params if id(p) not in hidden],
                         cfg, fused)
    return adamw(params, cfg, fused)
