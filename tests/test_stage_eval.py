"""`anima eval`: chat perplexity on assistant tokens (checked against a hand computation), eval sets from any
list of conversations, and the stage on real registered nano models with compare=champion."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers.registry import nano_registry  # noqa: F401  (session fixture)

CHATS = [
    [{"role": "user", "content": "What are you?"}, {"role": "assistant", "content": "I am a software program."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Are you a human?"},
     {"role": "assistant", "content": "No, I am a computer program."},
     {"role": "user", "content": "Where do you live?"}, {"role": "assistant", "content": "On the internet."}],
]


@pytest.fixture(scope="module")
def nano_dir(tmp_path_factory):
    from tests.helpers.models import build_nano_model_dir

    return build_nano_model_dir(tmp_path_factory.mktemp("nano") / "model")


def test_eval_set_fingerprint_is_content_only():
    from anima.evaluation.evalsets import make_eval_set

    a = make_eval_set("persona", CHATS)
    b = make_eval_set("other-name", [{"messages": c, "id": "x"} for c in CHATS])
    assert a.kind == "chat" and a.fingerprint == b.fingerprint and a.tag == f"ppl.{a.fingerprint}"
    assert make_eval_set("persona", CHATS[:1]).fingerprint != a.fingerprint
    assert make_eval_set("t", ["some text"]).kind == "text"
    from anima.errors import DataError

    with pytest.raises(DataError, match="mixes conversations and plain texts"):
        make_eval_set("x", [CHATS[0], "text"])


def test_chat_perplexity_is_assistant_token_loss(nano_dir):
    import torch
    import torch.nn.functional as F

    from anima.tokenizer.chat_template import render_chat
    from anima.evaluation.evalsets import make_eval_set
    from anima.evaluation.perplexity import load_for_eval, perplexity

    torch.set_num_threads(1)
    model, tok, template, ctx = load_for_eval(nano_dir)
    got = perplexity(model, tok, template, make_eval_set("p", CHATS), ctx=ctx, batch_size=1)
    total, n = 0.0, 0
    for chat in CHATS:  # by hand: one chat at a time, assistant mask from the template
        r = render_chat(chat, tok, template)
        ids = torch.tensor([r.input_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        mask = torch.tensor(r.assistant_mask[1:], dtype=torch.bool)
        total += float(F.cross_entropy(logits[mask], ids[0, 1:][mask], reduction="sum"))
        n += int(mask.sum())
    assert got.tokens == n and got.ppl == pytest.approx(math.exp(total / n), rel=1e-4)
    # batching and padding do not change it
    again = perplexity(model, tok, template, make_eval_set("p", CHATS), ctx=ctx, batch_size=8)
    assert again.ppl == pytest.approx(got.ppl, rel=1e-5)


def test_text_perplexity_and_score_model_dir(nano_dir):
    from anima.evaluation.evalsets import make_eval_set
    from anima.evaluation.perplexity import score_model_dir

    text = make_eval_set("val", ["The quick brown fox jumps over the lazy dog. " * 20], max_tokens=64)
    scores = score_model_dir(nano_dir, {"val": text, "persona": make_eval_set("persona", CHATS)})
    assert set(scores) == {"val", "persona"} and all(1 < v < 1e4 for v in scores.values())


def test_suite_config_is_a_real_persona_suite():
    from tests.helpers import compose_cfg

    cfg = compose_cfg("eval", [])
    assert cfg.eval.suite == "persona" and len(cfg.eval.prompts) >= 12
    assert all(p.prompt and p.reference for p in cfg.eval.prompts)
    assert "software" in cfg.eval.persona_keywords and cfg.sampling.temperature == 0


@pytest.mark.slow
def test_eval_stage_compare_champion(nano_registry, capsys):
    import mlflow
    from mlflow import MlflowClient

    from anima.stages.eval import eval_stage

    reg = nano_registry
    client = MlflowClient()
    client.set_registered_model_alias(reg.name, "champion", "1")
    cfg = reg.cfg("eval", f"model=models:/{reg.name}/2", "compare=champion", "eval=smoke", "eval.max_examples=16",
                  "sampling.max_new_tokens=8")
    summary = eval_stage(cfg)
    out = capsys.readouterr().out
    assert f"models:/{reg.name}/2" in out and f"models:/{reg.name}/1" in out and "persona_ppl" in out
    m, c = summary["metrics"], summary["compare_metrics"]
    for k in ("val_ppl", "persona_ppl", "rouge_l", "chrf", "distinct_1", "distinct_2", "repetition_3",
              "reply_length", "persona_keyword_rate"):
        assert k in m and k in c, k
    run = mlflow.get_run(summary["run_id"])
    assert run.data.metrics["eval/persona_ppl"] == pytest.approx(m["persona_ppl"])
    assert run.data.metrics["compare/persona_ppl"] == pytest.approx(c["persona_ppl"])
    # every metric has its seeded bootstrap interval next to it, and the paired difference has one too
    for k in ("persona_ppl", "rouge_l", "chrf"):
        low, high = run.data.metrics[f"eval/{k}_ci_low"], run.data.metrics[f"eval/{k}_ci_high"]
        assert low <= m[k] + 1e-9 and m[k] - 1e-9 <= high, k
        d = summary["differences"][k]
        assert d["low"] - 1e-9 <= d["value"] <= d["high"] + 1e-9 and d["n"] > 0
        assert run.data.metrics[f"compare/{k}_diff"] == pytest.approx(m[k] - c[k], abs=1e-6)
    assert "bootstrap" in out and "Δ" in out
    arts = {a.path for a in client.list_artifacts(summary["run_id"], "eval")}
    assert {"eval/suite.json", "eval/suite.csv", "eval/summary.json", "eval/intervals.png"} <= arts
    table = json.loads(open(mlflow.artifacts.download_artifacts(run_id=summary["run_id"],
                                                               artifact_path="eval/suite.json")).read())
    cols = table["columns"]  # one row per prompt, both replies side by side
    assert {"prompt", "reference", "reply", "champion_reply", "rouge_l", "champion_rouge_l"} <= set(cols)
    assert len(table["data"]) == 3
    # the eval sets (and the suite) are recorded as dataset inputs, fingerprinted
    inputs = run.inputs.dataset_inputs
    assert any(i.dataset.name.startswith("suite:") for i in inputs) and len(inputs) >= 3
    tags = client.get_model_version(reg.name, "2").tags
    assert float(tags["eval.persona_ppl"]) == pytest.approx(m["persona_ppl"], rel=1e-5)
    assert "eval.persona_ppl_ci_low" in tags and json.loads(tags["eval.vs.v1.persona_ppl"])["data"] == summary["data"]
    # perplexities are the cached ppl.<fp> tags the merge ranking uses (same data -> same key)
    assert any(k.startswith("ppl.") for k in tags)


def test_eval_bad_compare_is_one_line(nano_registry):
    from anima.errors import ModelError
    from anima.stages.eval import eval_stage

    reg = nano_registry
    with pytest.raises(ModelError, match="compare=nosuch: .*has no alias 'nosuch'"):
        eval_stage(reg.cfg("eval", f"model=models:/{reg.name}/2", "compare=nosuch", "eval=smoke"))


def test_eval_compare_missing_skip_evaluates_alone(nano_registry, capsys):
    """A pipeline's first run: the champion it compares against does not exist yet."""
    from anima.stages.eval import eval_stage

    reg = nano_registry
    summary = eval_stage(reg.cfg("eval", f"model=models:/{reg.name}/2", "compare=nosuch", "compare_missing=skip",
                                 "eval=smoke", "eval.max_examples=8"))
    assert summary["compare"] is None and summary["compare_metrics"] is None
    assert summary["metrics"]["persona_ppl"] > 0
    assert f"no comparison: models:/{reg.name}@nosuch does not exist yet" in capsys.readouterr().out
