"""Merge methods on nano Llama models saved as real Hugging Face dirs (safetensors)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from anima.errors import ConfigError, ModelError
from anima.merge import check_compatible, greedy_soup, merge, merge_models, perplexity_weights, registered
from anima.merge.methods import slerp_tensors, ties

torch.set_num_threads(1)


def nano_config(**overrides):
    from transformers import LlamaConfig

    kw = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=300, max_position_embeddings=64, tie_word_embeddings=False,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def write_tokenizer(d: Path, extra: str = "") -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = ["<unk>", "<s>", "</s>", "<pad>", "hello", "world", "persona"] + ([extra] if extra else [])
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(d / "tokenizer.json"))


def make_model(d: Path, seed: int = 0, state: dict | None = None, tok_extra: str = "", **cfg) -> Path:
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(nano_config(**cfg))
    if state is not None:
        model.load_state_dict(state, strict=False)
    model.save_pretrained(d, safe_serialization=True)
    write_tokenizer(d, tok_extra)
    (d / "anima.json").write_text(json.dumps({"chat_template": "chatml"}))
    return d


def sd(d: Path) -> dict[str, torch.Tensor]:
    return load_file(str(d / "model.safetensors"))


def with_state(src: Path, dst: Path, fn) -> Path:
    """Copy model dir ``src`` to ``dst`` with every tensor replaced by fn(key, tensor)."""
    import shutil

    shutil.copytree(src, dst)
    save_file({k: fn(k, v).contiguous() for k, v in sd(src).items()}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
    return dst


def assert_same(a: dict, b: dict, exact: bool = True, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=k)


@pytest.fixture
def trio(tmp_path):
    return [make_model(tmp_path / f"m{i}", seed=i) for i in range(3)]


# ---------------------------------------------------------------- registry


def test_registry_has_methods_with_descriptions_and_papers():
    reg = registered()
    assert {"uniform", "weighted", "slerp", "task_arithmetic", "ties", "greedy_soup"} <= set(reg)
    assert reg["greedy_soup"].procedure and not reg["uniform"].procedure
    assert [n for n, m in reg.items() if m.needs_base] == ["task_arithmetic", "ties"]
    for m in reg.values():
        assert m.description and "\n" not in m.description and m.paper


def test_unknown_method_lists_registered_methods(trio, tmp_path):
    with pytest.raises(ConfigError) as e:
        merge("soupy", trio, tmp_path / "out")
    msg = str(e.value)
    assert "soupy" in msg and "uniform:" in msg and "ties:" in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()


def test_bad_parameters_refused_before_writing(trio, tmp_path):
    with pytest.raises(ConfigError, match="no parameter 'alpha'"):
        merge("uniform", trio, tmp_path / "o", alpha=1)
    with pytest.raises(ConfigError, match="exactly 2 ingredients"):
        merge("slerp", trio, tmp_path / "o", t=0.3)
    with pytest.raises(ConfigError, match="3 values for 2"):
        merge("weighted", trio[:2], tmp_path / "o", weights=[1, 1, 1])
    with pytest.raises(ConfigError, match="density"):
        merge("ties", trio[1:], tmp_path / "o", base_dir=trio[0], density=0)
    with pytest.raises(ModelError, match="needs a base"):
        merge("task_arithmetic", trio, tmp_path / "o")
    with pytest.raises(ConfigError, match="takes no base"):
        merge("uniform", trio[1:], tmp_path / "o", base_dir=trio[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m0", "m1", "m2"]


# ---------------------------------------------------------------- linear methods


def test_uniform_of_identical_models_is_identity(tmp_path):
    a = make_model(tmp_path / "a", seed=7)
    copies = [with_state(a, tmp_path / f"c{i}", lambda k, v: v) for i in range(3)]
    out = merge("uniform", [a, *copies], tmp_path / "out")
    assert_same(sd(out), sd(a))
    # side files come from the first ingredient; anima.json gains the recipe
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        assert (out / name).read_bytes() == (a / name).read_bytes()
    meta = json.loads((out / "anima.json").read_text())
    assert meta["chat_template"] == "chatml" and meta["merge"]["method"] == "uniform"
    assert len(meta["merge"]["ingredients"]) == 4
    # the result is a loadable HF model with the same outputs
    from transformers import LlamaForCausalLM

    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        la = LlamaForCausalLM.from_pretrained(a).eval()(ids).logits
        lo = LlamaForCausalLM.from_pretrained(out).eval()(ids).logits
    assert torch.equal(la, lo)


def test_uniform_is_the_mean(trio, tmp_path):
    out = sd(merge("uniform", trio, tmp_path / "out"))
    sds = [sd(d) for d in trio]
    for k in out:
        torch.testing.assert_close(out[k], (sds[0][k] + sds[1][k] + sds[2][k]) / 3)


def test_weighted_with_one_weight_is_that_model(trio, tmp_path):
    out = merge("weighted", trio, tmp_path / "out", weights=[0.0, 1.0, 0.0])
    assert_same(sd(out), sd(trio[1]))
    # unnormalized weights are normalized: (2, 2, 0) == uniform of the first two
    w = sd(merge("weighted", trio, tmp_path / "w", weights=[2, 2, 0]))
    u = sd(merge("uniform", trio[:2], tmp_path / "u"))
    assert_same(w, u)


def test_perplexity_weights():
    assert perplexity_weights([2.0, 4.0]) == pytest.approx([2 / 3, 1 / 3])
    with pytest.raises(ConfigError):
        perplexity_weights([2.0, float("inf")])


# ---------------------------------------------------------------- SLERP


def test_slerp_endpoints_are_exact(trio, tmp_path):
    a, b = trio[:2]
    assert_same(sd(merge("slerp", [a, b], tmp_path / "t0", t=0.0)), sd(a))
    assert_same(sd(merge("slerp", [a, b], tmp_path / "t1", t=1.0)), sd(b))
    mid = sd(merge("slerp", [a, b], tmp_path / "mid", t=0.5))
    assert not torch.equal(mid["model.layers.0.mlp.up_proj.weight"], sd(a)["model.layers.0.mlp.up_proj.weight"])


def test_slerp_geometry_and_colinear_fallback():
    v0, v1 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(slerp_tensors(v0, v1, 0.5), torch.full((2,), math.sqrt(0.5), dtype=torch.float64))
    # colinear (2 * v0) -> plain lerp, no division by sin(0)
    torch.testing.assert_close(slerp_tensors(v0, 2 * v0, 0.25), torch.tensor([1.25, 0.0], dtype=torch.float64))
    # a zero tensor -> lerp
    torch.testing.assert_close(slerp_tensors(torch.zeros(2, dtype=torch.float64), v1, 0.5), 0.5 * v1)


# ---------------------------------------------------------------- task arithmetic / TIES


def test_task_arithmetic_formula(trio, tmp_path):
    base, x, y = trio
    out = sd(merge("task_arithmetic", [x, y], tmp_path / "ta", base_dir=base, scaling=0.5))
    b, sx, sy = sd(base), sd(x), sd(y)
    for k in out:
        torch.testing.assert_close(out[k], b[k] + 0.5 * ((sx[k] - b[k]) + (sy[k] - b[k])))


def test_ties_density_one_single_ingredient_equals_task_arithmetic(trio, tmp_path):
    base, x = trio[:2]
    t = sd(merge("ties", [x], tmp_path / "ties", base_dir=base, density=1.0, scaling=0.7))
    ta = sd(merge("task_arithmetic", [x], tmp_path / "ta", base_dir=base, scaling=0.7))
    assert_same(t, ta, exact=False, atol=1e-6)


def test_ties_density_one_equals_task_arithmetic_over_n_when_signs_agree(tmp_path):
    """Convention (paper/mergekit): disjoint mean over sign-agreeing entries, times `scaling`.
    With density=1 and no sign conflict this is task arithmetic with scaling/n, exactly."""
    base = make_model(tmp_path / "base", seed=0)
    direction = {k: torch.randn_like(v) for k, v in sd(base).items()}
    ings = [
        with_state(base, tmp_path / f"i{c}", lambda k, v, c=c: v + c * direction[k])
        for c in (0.5, 1.0, 2.0)
    ]
    t = sd(merge("ties", ings, tmp_path / "ties", base_dir=base, density=1.0, scaling=1.0))
    ta = sd(merge("task_arithmetic", ings, tmp_path / "ta", base_dir=base, scaling=1 / 3))
    assert_same(t, ta, exact=False, atol=1e-6)
    # the result is base + mean task vector: (0.5 + 1 + 2)/3 * direction
    b = sd(base)
    for k in t:
        torch.testing.assert_close(t[k], b[k] + (3.5 / 3) * direction[k], atol=1e-5, rtol=1e-5)


class _Src:
    """A TensorSource over in-memory tensors, for hand-checked TIES arithmetic."""

    def __init__(self, base, tensors):
        self.key, self.n = "w", len(tensors)
        self._b, self._t = base.double(), [t.double() for t in tensors]

    def get(self, i):
        return self._t[i].clone()

    def base(self):
        return self._b


def test_ties_sign_election_and_disjoint_mean_by_hand():
    base = torch.zeros(4)
    taus = [torch.tensor([3.0, -1.0, 0.5, 2.0]), torch.tensor([-1.0, -2.0, 0.0, 4.0]),
            torch.tensor([1.0, 4.0, -0.5, 0.1])]
    # density 1. entry 0: sum 3>0 -> mean(3,1)=2; entry 1: sum 1>0 -> only 4 agrees -> 4;
    # entry 2: sum 0 -> '+' elected -> only 0.5 agrees (zero never counts) -> 0.5; entry 3: mean(2,4,0.1)
    out = ties(_Src(base, taus), density=1.0, scaling=1.0, weights=None)
    torch.testing.assert_close(out, torch.tensor([2.0, 4.0, 0.5, 6.1 / 3], dtype=torch.float64))
    # density 0.5 keeps the top-2 magnitudes of each: [3,0,0,2], [0,-2,0,4], [1,4,0,0]
    # entry 0: mean(3,1)=2; entry 1: sum 2>0 -> 4; entry 2: nothing -> 0; entry 3: mean(2,4)=3;
    # then scaling 0.5
    out = ties(_Src(base, taus), density=0.5, scaling=0.5, weights=None)
    torch.testing.assert_close(out, torch.tensor([1.0, 2.0, 0.0, 1.5], dtype=torch.float64))


def test_ties_trims_to_density(trio, tmp_path):
    base, x = trio[:2]
    out = sd(merge("ties", [x], tmp_path / "ties", base_dir=base, density=0.25))
    b = sd(base)
    k = "model.layers.1.mlp.down_proj.weight"
    changed = (out[k] != b[k]).float().mean().item()
    assert changed == pytest.approx(0.25, abs=0.01)


# ---------------------------------------------------------------- tied embeddings


def test_tied_embeddings_merge_consistently(tmp_path):
    from transformers import LlamaForCausalLM

    a = make_model(tmp_path / "a", seed=1, tie_word_embeddings=True)
    b = make_model(tmp_path / "b", seed=2, tie_word_embeddings=True)
    assert "lm_head.weight" not in sd(a)  # save_pretrained stores a tied weight once
    out = merge("uniform", [a, b], tmp_path / "out")
    assert sd(out).keys() == sd(a).keys()
    m = LlamaForCausalLM.from_pretrained(out)
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(m.model.embed_tokens.weight.detach(),
                               (sd(a)["model.embed_tokens.weight"] + sd(b)["model.embed_tokens.weight"]) / 2)
    # an untied ingredient is refused by the check; merged anyway, its missing key reads the embedding
    u = make_model(tmp_path / "u", seed=3)
    with pytest.raises(ModelError, match="tie_word_embeddings"):
        merge("uniform", [u, a], tmp_path / "mixed")
    mixed = sd(merge("uniform", [u, a], tmp_path / "mixed", check=False))
    torch.testing.assert_close(mixed["lm_head.weight"],
                               (sd(u)["lm_head.weight"] + sd(a)["model.embed_tokens.weight"]) / 2)


# ---------------------------------------------------------------- compatibility, atomicity


def test_incompatible_config_refused_naming_field_and_dirs(tmp_path):
    a = make_model(tmp_path / "a", seed=0)
    b = make_model(tmp_path / "b", seed=0, intermediate_size=96)
    with pytest.raises(ModelError) as e:
        merge("uniform", [a, b], tmp_path / "out")
    msg = str(e.value)
    assert "'intermediate_size'" in msg and str(a) in msg and str(b) in msg and "64" in msg and "96" in msg
    assert "\n" not in msg and not (tmp_path / "out").exists()


def test_incompatible_tokenizer_refused(tmp_path):
    a = make_model(tmp_path / "a", seed=0)
    b = make_model(tmp_path / "b", seed=1, tok_extra="extra")
    with pytest.raises(ModelError, match=r"tokenizer\.json .* in .*a but .* in .*b"):
        check_compatible([a, b])
    check_compatible([a, make_model(tmp_path / "c", seed=2)])  # same tokenizer, other weights: fine


def test_unreadable_ingredient_leaves_nothing_behind(trio, tmp_path):
    (trio[2] / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="m2.*cannot read"):
        merge("uniform", trio, tmp_path / "out")
    (trio[2] / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no model.safetensors"):
        merge("uniform", trio, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m0", "m1", "m2"]


def test_merge_overwrites_existing_out_dir_atomically(trio, tmp_path):
    out = merge("uniform", trio[:1], tmp_path / "out")
    (out / "stale.txt").write_text("old")
    merge("uniform", trio[1:2], out)
    assert not (out / "stale.txt").exists()
    assert_same(sd(out), sd(trio[1]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m0", "m1", "m2", "out"]


# ---------------------------------------------------------------- greedy soup


def test_greedy_soup_keeps_only_improving_ingredients(tmp_path):
    """evaluate_fn = squared distance of the weights to a target model: exact, deterministic."""
    target = make_model(tmp_path / "target", seed=0)
    t = sd(target)
    e = {k: torch.randn_like(v) * 0.1 for k, v in t.items()}
    a = with_state(target, tmp_path / "a", lambda k, v: v + e[k])        # score |e|^2
    b = with_state(target, tmp_path / "b", lambda k, v: v - e[k])        # soup(a,b) = target: 0
    c = with_state(target, tmp_path / "c", lambda k, v: v + 5 * e[k])    # soup(a,b,c) = t + 5e/3: worse
    d = with_state(target, tmp_path / "d", lambda k, v: v + e[k])        # soup(a,b,d) = t + e/3: worse
    calls = []

    def dist(model_dir: Path) -> float:
        calls.append(model_dir)
        s = sd(model_dir)
        return float(sum(((s[k].double() - t[k].double()) ** 2).sum() for k in t))

    kept, score = greedy_soup([a, b, c, d], dist, tmp_path / "soup")
    assert kept == [a, b]
    assert score == pytest.approx(0.0, abs=1e-8)
    assert len(calls) == 4  # the first ingredient alone, then one soup per candidate
    assert_same(sd(tmp_path / "soup"), sd(merge("uniform", [a, b], tmp_path / "ab")))
    assert not any(p.name.startswith(".soup") for p in tmp_path.iterdir())
    # the same procedure through the registry, the one entry point for every method
    assert merge_models("greedy_soup", [a, b, c, d], tmp_path / "soup2", evaluate=dist) == [a, b]
    assert_same(sd(tmp_path / "soup2"), sd(tmp_path / "soup"))
    assert merge_models("uniform", [a, b], tmp_path / "ab2", evaluate=dist) == [a, b]
    with pytest.raises(ConfigError, match="works on whole models"):
        merge("greedy_soup", [a, b], tmp_path / "no")
    with pytest.raises(ConfigError, match="needs an evaluate function"):
        merge_models("greedy_soup", [a, b], tmp_path / "no")


def test_greedy_soup_with_real_loss_never_worse_than_first(tmp_path):
    from transformers import LlamaForCausalLM

    a = make_model(tmp_path / "a", seed=0)
    same = with_state(a, tmp_path / "same", lambda k, v: v)               # no change -> not kept
    noisy = with_state(a, tmp_path / "noisy", lambda k, v: v + 3 * torch.randn_like(v))
    batch = torch.tensor([[1, 4, 5, 6, 4, 5, 6, 2], [1, 6, 5, 4, 6, 5, 4, 2]])

    def loss(model_dir: Path) -> float:
        with torch.no_grad():
            m = LlamaForCausalLM.from_pretrained(model_dir).eval()
            return float(m(batch, labels=batch).loss)

    kept, score = greedy_soup([a, same, noisy], loss, tmp_path / "soup")
    assert kept == [a]  # identical soup does not strictly improve; the noisy one hurts
    assert score == loss(a) == loss(tmp_path / "soup")
