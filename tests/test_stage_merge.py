"""`anima merge` on a real registry of nano models from one init: ranking (cached as version tags), every
method through the stage, greedy-soup selection, bad input (one line, nothing half-registered)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers.registry import nano_registry  # noqa: F401  (session fixture)

pytestmark = pytest.mark.slow


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def _versions(name: str) -> list[int]:
    return sorted(int(v.version) for v in _client().search_model_versions(f"name='{name}'"))


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


def _merge(reg, *extra: str):
    from anima.stages.merge import merge_stage

    return merge_stage(reg.cfg("merge", *extra))


def _dir(reg, version: int | str) -> Path:
    from anima.model.resolve import resolve_model

    return resolve_model(f"models:/{reg.name}/{version}", reg.cfg("merge").tracking).path


def test_dry_run_prints_ranking_writes_nothing_and_caches_scores(nano_registry, capsys):
    import mlflow

    from anima.evaluation import perplexity

    reg = nano_registry
    before = _versions(reg.name)
    loads = perplexity.MODEL_LOADS
    assert _merge(reg, "merge.dry_run=true") is None
    out = capsys.readouterr().out
    assert "Ranking of 3 candidate(s)" in out and "dry run" in out
    for v in before:
        assert f"{reg.name}/{v}" in out
    assert _versions(reg.name) == before
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`anima.stage` = 'merge'",
                              output_format="list")
    assert runs == []
    # scores are cached on the versions, keyed by the eval data fingerprint
    tags = [_client().get_model_version(reg.name, str(v)).tags for v in before]
    assert all(sum(k.startswith("ppl.") for k in t) == 2 for t in tags), [sorted(t) for t in tags]
    first_loads = perplexity.MODEL_LOADS - loads
    # re-ranking on the same data loads no model at all
    loads = perplexity.MODEL_LOADS
    _merge(reg, "merge.dry_run=true")
    assert perplexity.MODEL_LOADS == loads and first_loads in (0, 3)
    assert "*" in capsys.readouterr().out
    # other eval data -> another fingerprint -> scored again
    _merge(reg, "merge.dry_run=true", "eval.max_examples=8", "merge.top_k=1")
    assert perplexity.MODEL_LOADS == loads + 3


def test_ranking_matches_training_perplexity_scale(nano_registry):
    from anima.evaluation.candidates import select_candidates, score_candidates
    from anima.config.merge import MergeStageConfig
    from anima.config.typed import typed
    from anima.evaluation.evalsets import load_eval_sets
    from anima.evaluation.ranking import rank_candidates

    reg = nano_registry
    cfg = reg.cfg("merge")
    cands = select_candidates(reg.name)
    score_candidates(cands, load_eval_sets(typed(cfg, MergeStageConfig)), cfg.tracking)
    rows = rank_candidates(cands, "persona", top_k=2)
    assert [r.score for r in rows] == sorted(r.score for r in rows)
    assert [r.status for r in rows] == ["selected", "selected", "beyond top_k (2)"]
    assert all(1 < r.score < 600 for r in rows)  # vocab 512: a trained nano model is well under uniform


def test_uniform_merge_registers_a_tagged_candidate(nano_registry):
    import mlflow

    reg = nano_registry
    res = _merge(reg, "merge.method=uniform", "merge.top_k=3")
    mv = _client().get_model_version(reg.name, res.version)
    t = mv.tags
    assert t["stage"] == "merge" and t["method"] == "uniform"
    assert sorted(t["ingredient_versions"].split(",")) == ["1", "2", "3"]
    assert json.loads(t["weights"]) == pytest.approx([1 / 3] * 3, abs=1e-5)
    assert set(json.loads(t["scores"])) == set(t["ingredients"].split(",")) == set(t["parent"].split(","))
    assert float(t["persona_ppl"]) == pytest.approx(res.scores["persona"], rel=1e-5)
    assert sum(k.startswith("ppl.") for k in t) == 2  # the merge's own scores are cached too
    assert str(_client().get_model_version_by_alias(reg.name, "candidate").version) == res.version
    run = mlflow.get_run(res.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["anima.stage"] == "merge"
    assert "merged/persona_ppl" in run.data.metrics and "best_ingredient/persona_ppl" in run.data.metrics
    arts = {a.path for a in _client().list_artifacts(res.run_id)}
    assert {"ranking.csv", "ranking.json", "model", "config.yaml"} <= arts


def test_uniform_of_identical_models_is_the_identity(nano_registry):
    reg = nano_registry
    res = _merge(reg, f"merge.models=[models:/{reg.name}/2,models:/{reg.name}/2]", "merge.alias=null")
    a, b = _weights(_dir(reg, 2)), _weights(res.model_dir)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert res.scores["persona"] == pytest.approx(res.best_ingredient["persona"], rel=1e-6)


def test_weighted_uses_inverse_perplexity(nano_registry):
    reg = nano_registry
    res = _merge(reg, "merge.method=weighted", "merge.top_k=2", "merge.alias=null")
    inv = [1 / json.loads(_client().get_model_version(reg.name, res.version).tags["scores"])[u]["persona"]
           for u in res.ingredients]
    assert res.weights == pytest.approx([x / sum(inv) for x in inv], rel=1e-4)
    assert res.weights[0] >= res.weights[1]  # rank order: best first, biggest weight


def test_slerp_endpoints_and_order(nano_registry):
    reg = nano_registry
    models = f"merge.models=[models:/{reg.name}/2,models:/{reg.name}/3]"
    for t, want in (("0.0", 2), ("1.0", 3)):
        res = _merge(reg, "merge.method=slerp", models, f"merge.t={t}", "merge.alias=null")
        a, b = _weights(_dir(reg, want)), _weights(res.model_dir)
        assert all(a[k].equal(b[k]) for k in a), t
        assert res.ingredients == [f"models:/{reg.name}/2", f"models:/{reg.name}/3"]


def test_ties_density_one_single_ingredient_equals_task_arithmetic(nano_registry):
    import torch

    reg = nano_registry
    base = f"merge.base=models:/{reg.name}/1"
    one = f"merge.models=[models:/{reg.name}/3]"
    ta = _merge(reg, "merge.method=task_arithmetic", base, one, "merge.alias=null")
    ties = _merge(reg, "merge=ties", base, one, "merge.density=1.0", "merge.alias=null")
    a, b = _weights(ta.model_dir), _weights(ties.model_dir)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # base + (v3 - base) = v3
    v3 = _weights(_dir(reg, 3))
    assert all(torch.allclose(a[k], v3[k], atol=1e-6) for k in a)
    tags = _client().get_model_version(reg.name, ties.version).tags
    assert tags["base"] == f"models:/{reg.name}/1" and json.loads(tags["merge_params"])["density"] == 1.0
    # the base is not an ingredient even when it is a candidate
    res = _merge(reg, "merge.method=ties", base, "merge.density=0.5", "merge.alias=null")
    assert f"models:/{reg.name}/1" not in res.ingredients and len(res.ingredients) == 2


def test_greedy_soup_is_no_worse_than_the_best_ingredient(nano_registry):
    reg = nano_registry
    res = _merge(reg, "merge=soup")
    ranking = [r for r in res.ranking if r["status"] == "selected"]
    assert res.ingredients[0] == ranking[0]["model"]  # the best is always kept, first
    assert set(res.ingredients) <= {r["model"] for r in ranking}
    assert res.scores["persona"] <= res.best_ingredient["persona"] + 1e-9
    assert res.best_ingredient["persona"] == pytest.approx(ranking[0]["persona_ppl"])
    assert _client().get_model_version(reg.name, res.version).tags["method"] == "greedy_soup"


def test_merges_are_not_candidates_unless_asked(nano_registry):
    from anima.evaluation.candidates import select_candidates

    reg = nano_registry
    plain = select_candidates(reg.name)
    assert {c.tags.get("stage") for c in plain} == {"pretrain"}
    assert any(c.tags.get("stage") == "merge" for c in select_candidates(reg.name, include_merges=True))
    assert [c.version for c in select_candidates(reg.name, versions=[2, 3])] == ["2", "3"]


def test_bad_input_one_line_and_nothing_registered(nano_registry, tmp_path, capsys):
    from anima.cli import main
    from anima.errors import AnimaError, ConfigError, ModelError

    reg = nano_registry
    before = _versions(reg.name)
    with pytest.raises(ConfigError, match="merge.method='nope' is unknown.*uniform.*greedy_soup"):
        _merge(reg, "merge.method=nope")
    with pytest.raises(AnimaError, match="no versions of anima-nano match .*tags stage=sft"):
        _merge(reg, "+merge.tags.stage=sft")
    with pytest.raises(AnimaError, match=r"all 3 candidates exceed merge.max_perplexity=1\.5"):
        _merge(reg, "merge.max_perplexity=1.5")
    with pytest.raises(ConfigError, match="needs merge.base"):
        _merge(reg, "merge.method=ties")
    with pytest.raises(ModelError, match="no registered model 'nope'"):
        _merge(reg, "registry.name=nope")
    assert _versions(reg.name) == before
    # through the CLI: exit status 2, one line, no traceback
    with pytest.raises(SystemExit) as exited:  # Hydra's task exits with the CLI's status
        main(["merge", *reg.overrides("merge.method=nope")])
    rc = exited.value.code
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("anima: error: merge.method='nope'") and err.count("\n") == 1

    # an ingredient whose weights do not load: one line naming it, no new version, no run registered
    from mlflow import MlflowClient

    good = tmp_path / "good"
    shutil.copytree(_dir(reg, 1), good)
    broken = tmp_path / "broken"
    shutil.copytree(_dir(reg, 1), broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    client = MlflowClient()
    client.create_registered_model("anima-broken")
    client.create_model_version("anima-broken", source=str(good), tags={"stage": "sft"})
    client.create_model_version("anima-broken", source=str(broken), tags={"stage": "sft"})
    with pytest.raises(ModelError, match="models:/anima-broken/2: cannot load model"):
        _merge(reg, "registry.name=anima-broken")
    assert _versions("anima-broken") == [1, 2]
