"""Split stability (a hypothesis property: appending data never moves an example), dedup primitives, and the
reference-model score + rehearsal from a registered model (slow: real nano model, real MLflow registry)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anima.config.data import DataConfig, DedupConfig
from anima.config.stage_schemas import DataStageConfig
from anima.config.typed import typed
from anima.data.dataset import ensure_dataset
from anima.data.dedup import Deduper, MinHasher, SeenSet, jaccard, key64
from anima.data.split import assign_split
from tests.helpers import paths_under

words = st.text(alphabet="abcdefghijklmnop ", min_size=3, max_size=30).filter(lambda s: s.strip())


def _build(tmp: Path, lines: list[str], tag: str):
    f = tmp / f"{tag}.jsonl"
    f.write_text("".join(json.dumps([{"role": "user", "content": q}, {"role": "assistant", "content": a}]) + "\n"
                         for q, a in lines))
    cfg = typed({
        "name": tag, "kind": "chat", "sources": {"c": {"kind": "jsonl_chat", "path": str(f)}},
        "split": {"val": 0.3, "test": 0.2}, "filter": {"enabled": False}, "clean": {"min_example_chars": 0},
    }, DataConfig)
    ds = ensure_dataset(cfg, paths_under(tmp, raw=tmp))
    return {e["id"]: s for s in ("train", "val", "test") for e in ds.split(s)}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.lists(st.tuples(words, words), min_size=1, max_size=12),
       extra=st.lists(st.tuples(words, words), min_size=1, max_size=12))
def test_appending_data_never_moves_an_example(tmp_path_factory, base, extra) -> None:
    tmp = tmp_path_factory.mktemp("split")
    before = _build(tmp, base, "a")
    after = _build(tmp, base + extra, "b")
    for ex_id, split in before.items():
        assert after[ex_id] == split


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=50))
def test_growing_a_share_only_pulls_keys_into_it(key: str) -> None:
    assert assign_split(key, 0.0, 0.0) == "train"
    assert assign_split(key, 1.0, 0.0) == "val" and assign_split(key, 0.0, 1.0) == "test"
    small, larger_test, larger_val = (assign_split(key, 0.1, 0.1), assign_split(key, 0.1, 0.3),
                                      assign_split(key, 0.3, 0.1))
    assert small != "test" or larger_test == "test"
    assert small != "val" or larger_val == "val"
    assert small == "train" or "train" not in (larger_test, larger_val)  # nothing is pushed back into train


def test_assign_split_is_the_same_in_every_process() -> None:
    """A pure function of the key: pinned values (a changed hash would move the examples of every existing
    dataset) and a fresh interpreter with another hash seed agree."""
    keys = [f"example {i}" for i in range(40)]
    short = {"train": ".", "val": "v", "test": "T"}
    here = "".join(short[assign_split(k, 0.2, 0.2)] for k in keys)
    assert here == "T..vvTv....T......v.....TvT..T...vvv..TT"
    code = ("import json, sys; from anima.data.split import assign_split; "
            "print(json.dumps([assign_split(k, 0.2, 0.2) for k in json.load(sys.stdin)]))")
    child = subprocess.run([sys.executable, "-c", code], input=json.dumps(keys), capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert "".join(short[s] for s in json.loads(child.stdout)) == here


def test_split_ratios_are_respected() -> None:
    got = [assign_split(f"example {i}", 0.1, 0.05) for i in range(20000)]
    assert abs(got.count("val") / 20000 - 0.1) < 0.01 and abs(got.count("test") / 20000 - 0.05) < 0.01


def test_seen_set_batches_and_order() -> None:
    s = SeenSet()
    assert s.check_and_add(np.array([5, 3, 5], dtype=np.uint64)).tolist() == [False, False, True]
    for i in range(50):
        s.check_and_add(np.arange(i * 10, i * 10 + 10, dtype=np.uint64))
    assert s.check_and_add(np.array([3, 499, 10**9], dtype=np.uint64)).tolist() == [True, True, False]
    assert len(s.levels) < 10


def test_minhash_tracks_jaccard() -> None:
    rng = np.random.default_rng(0)
    base = " ".join(rng.choice(["sun", "moon", "star", "sky", "sea", "wind", "rain", "tree", "leaf"], 120))
    edited = base[:300] + " something else entirely " + base[330:]
    other = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"], 120))
    sig = MinHasher(128, 5).signatures([base, edited, other])
    est = (sig[0] == sig[1]).mean()
    assert abs(est - jaccard(base, edited)) < 0.12 and (sig[0] == sig[2]).mean() < 0.1


def test_deduper_exact_and_near() -> None:
    d = Deduper(DedupConfig(exact=True, near=True, threshold=0.8, ngram=5, num_perm=64))
    a = "the quick brown fox jumps over the lazy dog near the river bank at dawn"
    texts = [a, a, a.replace("dawn", "dusk"), "a completely unrelated sentence about tea"]
    assert d.check(texts, [key64(t) for t in texts]) == [None, "exact", "near", None]
    assert d.check([a + "!"], [key64(a + "!")]) == ["near"]  # against an earlier batch


@pytest.mark.slow
def test_model_score_and_rehearsal_from_registered_model(project: Path, raw_dir: Path, tmp_path_factory) -> None:
    """filter.model scores examples (perplexity column, drop_worst) and rehearsal.source=models:/... finds the
    dataset its training run recorded."""
    import mlflow

    from anima.tracking.registry import register_model
    from anima.tracking.store import setup_mlflow
    from tests.helpers import compose_cfg
    from tests.helpers.models import cached_nano_model_dir

    model_dir = cached_nano_model_dir(tmp_path_factory)
    cfg = compose_cfg("data", ["data=persona_hamlet", f"data.filter.model={model_dir}", "data.filter.drop_worst=0.2"],
                      raw_dir)
    spec = typed(cfg, DataStageConfig)
    ds = ensure_dataset(spec.data, spec.paths, spec.tracking)
    scores = [e["score"] for e in ds.split("train")]
    assert all(isinstance(s, float) and s > 1 for s in scores)
    st_ = ds.manifest["counts"]["sources"]["hamlet"]
    assert st_["drop_reasons"]["worst_score"] == pytest.approx(0.2 * st_["deduplicated"], abs=2)

    setup_mlflow(cfg.tracking)
    with mlflow.start_run() as run:
        mlflow.set_tag("anima.data_fingerprint", ds.fingerprint)
        mlflow.log_artifacts(str(model_dir), "model")
    register_model("hamlet-nano", run.info.run_id, f"{run.info.artifact_uri}/model", {})
    mix = compose_cfg("data", ["data=chat_mix", "data.rehearsal.source=models:/hamlet-nano/1",
                               "data.rehearsal.ratio=0.2", "data.rehearsal.top_ratio=0.5"], raw_dir)
    mix = typed(mix, DataStageConfig)
    out = ensure_dataset(mix.data, mix.paths, mix.tracking)
    assert out.manifest["rehearsal"]["fingerprint"] == ds.fingerprint
    reh = [e for e in out.split("train") if e["source"].startswith("rehearsal:")]
    best = sorted(scores)[: round(0.5 * len(scores))]
    assert reh and max(e["score"] for e in reh) <= max(best)
