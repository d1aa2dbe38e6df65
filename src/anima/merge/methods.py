"""Merge methods: a registry of small per-tensor functions (mergekit style).

Each method sees ONE parameter tensor at a time through a :class:`TensorSource` (ingredient ``i``'s
copy of that tensor, and the base model's copy when the method needs one), so the driver in
:mod:`anima.merge.streaming` can stream any number of ingredients with memory bounded by one output
model plus a few tensors. Arithmetic is done in float64 by default so that linear methods are exact at
their identities (uniform of identical models, weight 1, t=0/1), then cast back to the stored dtype;
TIES, which keeps several temporaries of a tensor alive, computes in float32 to halve them.

Each method also owns what the merge stage needs to know about it: whether it needs a base model, how
many ingredients it takes, and ``from_config``, which reads its parameters from the `merge` config group
and gives the weight each ingredient gets (for the registered version's tags). A *procedure* (greedy soup,
in :mod:`anima.merge.soup`) is registered the same way but works on whole model dirs, not tensors.

Adding a method::

    @register("name", description="one line", paper="citation", params={"x": 0.5},
              from_config=lambda values, n, scores: ({"x": float(values["x"])}, [1.0 / n] * n))
    def name(src: TensorSource, x: float) -> torch.Tensor: ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch

from anima.errors import ConfigError

COMPUTE_DTYPE = torch.float64


class TensorSource(Protocol):
    """One parameter tensor (``key``) across ingredients, in the method's compute dtype."""

    key: str
    n: int

    def get(self, i: int) -> torch.Tensor: ...

    def base(self) -> torch.Tensor: ...


#: ``from_config(values, n, scores) -> (params, weights)``: the method's parameters read from the `merge`
#: config group (``values``) for ``n`` ingredients with ranking ``scores``, and each ingredient's weight.
FromConfig = Callable[[Mapping[str, Any], int, Sequence[float]], tuple[dict[str, Any], list[float]]]


def uniform_config(values: Mapping[str, Any], n: int, scores: Sequence[float]) -> tuple[dict[str, Any], list[float]]:
    """No parameters; every ingredient weighs 1/n (the default ``from_config``)."""
    return {}, [1.0 / n] * n


@dataclass(frozen=True)
class MergeMethod:
    """A registered method: per-tensor ``fn(src, **params)``, or with ``procedure`` a whole-model
    ``fn(dirs, out_dir, *, evaluate, **params) -> kept dirs``."""

    name: str
    description: str
    paper: str
    fn: Callable[..., Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    needs_base: bool = False
    n_models: int | None = None  # exact number of ingredients, None = any (>= 1)
    check: Callable[[int, dict[str, Any]], None] | None = None
    compute_dtype: torch.dtype = COMPUTE_DTYPE
    from_config: FromConfig = uniform_config
    procedure: bool = False

    def resolve_params(self, n: int, params: dict[str, Any]) -> dict[str, Any]:
        """Defaults + given params, validated before any tensor is touched (fail fast, one line)."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            accepted = ", ".join(sorted(self.defaults)) or "none"
            raise ConfigError(
                f"merge method '{self.name}' has no parameter {unknown[0]!r} (accepted: {accepted})"
            )
        if self.n_models is not None and n != self.n_models:
            raise ConfigError(
                f"merge method '{self.name}' needs exactly {self.n_models} ingredients, got {n}"
            )
        if n < 1:
            raise ConfigError(f"merge method '{self.name}' needs at least one ingredient")
        resolved = {**self.defaults, **params}
        if self.check is not None:
            self.check(n, resolved)
        return resolved


_REGISTRY: dict[str, MergeMethod] = {}


def register(
    name: str,
    *,
    description: str,
    paper: str,
    params: dict[str, Any] | None = None,
    needs_base: bool = False,
    n_models: int | None = None,
    check: Callable[[int, dict[str, Any]], None] | None = None,
    compute_dtype: torch.dtype = COMPUTE_DTYPE,
    from_config: FromConfig = uniform_config,
    procedure: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(src, **params) -> Tensor`` under ``name``; ``params`` maps names to defaults.

    With ``procedure=True``, ``fn(dirs, out_dir, *, evaluate, **params)`` builds the whole model and returns
    the ingredient dirs it kept (see :class:`MergeMethod`).
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"merge method {name!r} registered twice")
        _REGISTRY[name] = MergeMethod(
            name, description, paper, fn, dict(params or {}), needs_base, n_models, check, compute_dtype,
            from_config, procedure,
        )
        return fn

    return deco


def registered() -> dict[str, MergeMethod]:
    return dict(_REGISTRY)


def get_method(name: str) -> MergeMethod:
    if name not in _REGISTRY:
        listing = "; ".join(f"{m.name}: {m.description}" for m in _REGISTRY.values())
        raise ConfigError(f"unknown merge method {name!r}; registered methods: {listing}")
    return _REGISTRY[name]


# ---------------------------------------------------------------- parameter checks


def _check_weights(n: int, p: dict[str, Any], required: bool) -> None:
    w = p.get("weights")
    if w is None:
        if required:
            raise ConfigError("merge parameter 'weights' is required (one weight per ingredient)")
        return
    w = list(w)
    if len(w) != n:
        raise ConfigError(f"merge parameter 'weights' has {len(w)} values for {n} ingredients")
    if any((not isinstance(x, (int, float))) or not math.isfinite(x) or x < 0 for x in w):
        raise ConfigError(f"merge parameter 'weights' must be finite and >= 0, got {w}")
    if sum(w) <= 0:
        raise ConfigError(f"merge parameter 'weights' must not all be zero, got {w}")


def perplexity_weights(perplexities: Sequence[float]) -> list[float]:
    """Weights w_i ∝ 1/ppl_i, normalized to sum to 1 (lower perplexity counts more)."""
    if not perplexities or any(not math.isfinite(p) or p <= 0 for p in perplexities):
        raise ConfigError(f"perplexities must be finite and > 0, got {list(perplexities)}")
    inv = [1.0 / p for p in perplexities]
    total = sum(inv)
    return [x / total for x in inv]


def _given_weights(values: Mapping[str, Any]) -> list[Any] | None:
    return list(values["weights"]) if values.get("weights") is not None else None


def _weighted_config(values: Mapping[str, Any], n: int, scores: Sequence[float]) -> tuple[dict[str, Any], list[float]]:
    """Explicit weights, else 1/perplexity of each ingredient; tags show them normalized."""
    w = _given_weights(values)
    if w is None:
        w = perplexity_weights(scores)
    total = sum(w)
    return {"weights": [float(x) for x in w]}, [float(x) / total for x in w]


def _slerp_config(values: Mapping[str, Any], n: int, scores: Sequence[float]) -> tuple[dict[str, Any], list[float]]:
    t = float(values["t"])
    return {"t": t}, [1.0 - t, t]


def _task_config(values: Mapping[str, Any], n: int, scores: Sequence[float]) -> tuple[dict[str, Any], list[float]]:
    given = _given_weights(values)
    return {"scaling": float(values["scaling"]), "weights": given}, [float(x) for x in (given or [1.0] * n)]


def _ties_config(values: Mapping[str, Any], n: int, scores: Sequence[float]) -> tuple[dict[str, Any], list[float]]:
    params, weights = _task_config(values, n, scores)
    return {**params, "density": float(values["density"])}, weights


# ---------------------------------------------------------------- linear methods


@register(
    "uniform",
    description="plain average of all ingredients (uniform model soup)",
    paper="Wortsman et al. 2022, Model soups, ICML, arXiv:2203.05482",
)
def uniform(src: TensorSource) -> torch.Tensor:
    acc = src.get(0)  # a fresh tensor per call: safe to accumulate into
    for i in range(1, src.n):
        acc += src.get(i)
    return acc / src.n


@register(
    "weighted",
    description="weighted average, weights normalized to sum 1 (e.g. w ∝ 1/perplexity)",
    paper="Wortsman et al. 2022 (soups); Matena & Raffel 2022, arXiv:2111.09832",
    params={"weights": None},
    check=lambda n, p: _check_weights(n, p, required=True),
    from_config=_weighted_config,
)
def weighted(src: TensorSource, weights: Sequence[float]) -> torch.Tensor:
    total = float(sum(weights))
    acc: torch.Tensor | None = None
    for i, w in enumerate(weights):
        if w == 0:
            continue  # skip reading: a zero weight must not even touch the tensor
        term = src.get(i) * (float(w) / total)
        acc = term if acc is None else acc.add_(term)
    assert acc is not None  # _check_weights guarantees one positive weight
    return acc


# ---------------------------------------------------------------- SLERP


def slerp_tensors(v0: torch.Tensor, v1: torch.Tensor, t: float, dot_threshold: float = 0.9995) -> torch.Tensor:
    """Spherical interpolation of two flattened tensors; lerp when (nearly) colinear or zero.

    As in mergekit: the angle comes from the normalized vectors, the interpolation weights are applied
    to the original (unnormalized) ones, so t=0 and t=1 return the endpoints exactly.
    """
    if t == 0.0:
        return v0.clone()
    if t == 1.0:
        return v1.clone()
    n0, n1 = v0.norm(), v1.norm()
    if n0 == 0 or n1 == 0:
        return (1 - t) * v0 + t * v1
    dot = float(((v0 / n0) * (v1 / n1)).sum().clamp(-1.0, 1.0))
    if abs(dot) > dot_threshold:
        return (1 - t) * v0 + t * v1
    theta0 = math.acos(dot)
    sin0 = math.sin(theta0)
    s0 = math.sin((1 - t) * theta0) / sin0
    s1 = math.sin(t * theta0) / sin0
    return s0 * v0 + s1 * v1


def _check_t(n: int, p: dict[str, Any]) -> None:
    t = p["t"]
    if not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0:
        raise ConfigError(f"merge parameter 't' must be in [0, 1], got {t!r}")


@register(
    "slerp",
    description="spherical interpolation between two models at t (0 = first, 1 = second)",
    paper="Shoemake 1985, Animating rotation with quaternion curves; as used in mergekit",
    params={"t": 0.5},
    n_models=2,
    check=_check_t,
    from_config=_slerp_config,
)
def slerp(src: TensorSource, t: float) -> torch.Tensor:
    return slerp_tensors(src.get(0), src.get(1), float(t))


# ---------------------------------------------------------------- task vectors


def _check_task(n: int, p: dict[str, Any]) -> None:
    _check_weights(n, p, required=False)
    s = p["scaling"]
    if not isinstance(s, (int, float)) or not math.isfinite(s):
        raise ConfigError(f"merge parameter 'scaling' must be a finite number, got {s!r}")


@register(
    "task_arithmetic",
    description="base + scaling * sum_i w_i (theta_i - base): add task vectors to a base model",
    paper="Ilharco et al. 2023, Editing models with task arithmetic, ICLR, arXiv:2212.04089",
    params={"scaling": 1.0, "weights": None},
    needs_base=True,
    check=_check_task,
    from_config=_task_config,
)
def task_arithmetic(src: TensorSource, scaling: float, weights: Sequence[float] | None) -> torch.Tensor:
    base = src.base()
    acc = torch.zeros_like(base)
    for i in range(src.n):
        w = 1.0 if weights is None else float(weights[i])
        if w != 0:
            acc.add_(src.get(i) - base, alpha=w)
    return base + float(scaling) * acc


def trim_top_magnitude_(delta: torch.Tensor, density: float) -> torch.Tensor:
    """In place: keep entries whose magnitude is among the top ``density`` fraction, zero the rest.

    Per tensor, k = ceil(density * numel); the cut is the k-th largest magnitude, so exact ties at the
    cut may keep a few more than k (as magnitude pruning usually does). density >= 1 keeps everything.
    """
    if density >= 1.0:
        return delta
    flat = delta.view(-1)
    k = max(1, math.ceil(density * flat.numel()))
    mag = flat.to(torch.float32, copy=True).abs_()  # float32 ranks magnitudes well enough
    cut = mag.kthvalue(flat.numel() - k + 1).values
    flat.masked_fill_(mag < cut, 0.0)
    return delta


def _check_ties(n: int, p: dict[str, Any]) -> None:
    _check_task(n, p)
    d = p["density"]
    if not isinstance(d, (int, float)) or not 0.0 < float(d) <= 1.0:
        raise ConfigError(f"merge parameter 'density' must be in (0, 1], got {d!r}")


@register(
    "ties",
    description="TIES: trim task vectors to top-density magnitude, elect sign by sum, disjoint mean",
    paper="Yadav et al. 2023, TIES-Merging: Resolving interference when merging models, NeurIPS, "
    "arXiv:2306.01708",
    params={"density": 0.5, "scaling": 1.0, "weights": None},
    needs_base=True,
    check=_check_ties,
    compute_dtype=torch.float32,
    from_config=_ties_config,
)
def ties(src: TensorSource, density: float, scaling: float, weights: Sequence[float] | None) -> torch.Tensor:
    """TIES, paper/mergekit convention ('sum' sign consensus, weighted disjoint mean, then * scaling).

    tau_i = trim(theta_i - base, density) (per tensor); gamma = sign(sum_i w_i tau_i);
    delta = sum_i w_i tau_i [sign(tau_i) == gamma] / sum_i w_i [sign(tau_i) == gamma]  (0 where empty);
    result = base + scaling * delta.

    Zero entries of tau_i (trimmed away, or unchanged) never count in the mean. Consequently, with
    density=1 TIES equals task arithmetic with scaling/n (weights/sum w) exactly where the task vectors
    are non-zero and agree in sign; where they conflict TIES drops the minority by design. With a single
    ingredient, density=1 gives task arithmetic with the same scaling.

    Two streaming passes (sign election, then disjoint sum) keep memory at a few copies of one tensor
    whatever the number of ingredients.
    """
    base = src.base()
    ws = [1.0] * src.n if weights is None else [float(w) for w in weights]

    def task_vector(i: int) -> torch.Tensor:
        return trim_top_magnitude_(src.get(i).sub_(base), density)

    elected = torch.zeros_like(base)
    for i in range(src.n):
        if ws[i] != 0:
            elected.add_(task_vector(i), alpha=ws[i])
    positive = elected >= 0  # mergekit: a zero sum elects '+'
    del elected
    num = torch.zeros_like(base)
    den = torch.zeros_like(base)
    for i in range(src.n):
        if ws[i] == 0:
            continue
        tau = task_vector(i)
        agree = torch.where(positive, tau > 0, tau < 0)  # zero entries never agree
        num.add_(tau.masked_fill_(~agree, 0.0), alpha=ws[i])
        den.add_(agree, alpha=ws[i])  # bool promoted on the fly, no float copy
        del tau, agree
    num.div_(den.clamp_(min=torch.finfo(den.dtype).tiny))  # den == 0 -> num == 0 -> 0
    return num.mul_(float(scaling)).add_(base)
