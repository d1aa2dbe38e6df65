"""`anima lineage`: version -> run -> config hash and data fingerprints -> parents (init_from, merge ingredients,
base), recursively, printed as a tree; from the CLI with tracking overrides like any stage."""

from __future__ import annotations

import pytest

from tests.helpers.registry import nano_registry  # noqa: F401  (session fixture)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def merged(nano_registry):
    from anima.stages.merge import merge_stage

    reg = nano_registry
    res = merge_stage(reg.cfg("merge", "merge.method=ties", f"merge.base=models:/{reg.name}/1",
                              f"merge.models=[models:/{reg.name}/2,models:/{reg.name}/3]", "merge.alias=lineage"))
    return reg, res


@pytest.fixture
def lineage_cli(capsys, monkeypatch):
    """Run `anima lineage ...` in-process; returns (status, printed tree). Wide columns: no wrapped lines."""
    monkeypatch.setenv("COLUMNS", "250")

    def call(reg, *args) -> tuple[int, str]:
        from anima.stages import lineage

        rc = lineage.main([*args, f"paths.root={reg.root}"])
        return rc, capsys.readouterr().out

    return call


def test_merge_lineage_tree(merged, lineage_cli):
    import mlflow

    reg, res = merged
    rc, out = lineage_cli(reg, f"models:/{reg.name}@lineage")
    assert rc == 0
    lines = out.splitlines()
    assert f"models:/{reg.name}/{res.version} @lineage" in out and "stage=merge" in out
    assert "merge: method=ties" in out
    run = mlflow.get_run(res.run_id)
    assert f"run {res.run_id} merge FINISHED" in out
    assert f"config {run.data.tags['anima.config_hash']}" in out
    assert "data chat_mix:persona@" in out  # the eval data the ranking used
    for v in ("2", "3"):
        assert any(f"ingredient models:/{reg.name}/{v}" in ln for ln in lines), v
    assert any(f"base models:/{reg.name}/1" in ln for ln in lines)
    # parents recurse: v2 and v3 were trained from v1 (init_from), v1 from the plays
    assert sum(f"init_from models:/{reg.name}/1" in ln for ln in lines) == 2
    assert "(shown above)" in out
    train_fp = reg.results[0].metrics and mlflow.get_run(reg.results[0].run_id).data.tags["anima.data_fingerprint"]
    assert f"data shakespeare@{train_fp}" in out
    # deeper levels sit further right: the tree is nested
    def indent(s):
        return next(len(ln) - len(ln.lstrip(" │├└─")) for ln in lines if s in ln)
    assert indent("ingredient models:/") > indent(f"models:/{reg.name}/{res.version}")


def test_depth_limit_and_bad_uri(merged, lineage_cli):
    from anima.errors import AnimaError, ConfigError

    reg, res = merged
    rc, out = lineage_cli(reg, f"models:/{reg.name}/{res.version}", "--depth", "0")
    assert rc == 0 and "beyond --depth 0" in out and "ingredient" not in out
    with pytest.raises(AnimaError, match="models:/anima-nano/99: no such registered version"):
        lineage_cli(reg, f"models:/{reg.name}/99")
    with pytest.raises(ConfigError, match="give exactly one model URI"):
        lineage_cli(reg)


def test_cli_prints_tree(merged, capsys):
    from anima.cli import main

    reg, res = merged
    rc = main(["lineage", f"models:/{reg.name}/2", f"paths.root={reg.root}"])
    out = capsys.readouterr().out
    assert rc == 0 and f"models:/{reg.name}/2" in out and "init_from" in out
    assert main(["lineage", "models:/nope/1", f"paths.root={reg.root}"]) == 2
    assert "anima: error:" in capsys.readouterr().err
