"""The layering rules of docs/ARCHITECTURE.md, checked on the source: no import cycle (between modules or
between packages), no library package importing the application layer (cli, stages, pipeline), no file over
400 lines and no function over 80."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "arch_report.py"


@pytest.fixture(scope="module")
def report() -> dict:
    spec = importlib.util.spec_from_file_location("arch_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["arch_report"] = module
    spec.loader.exec_module(module)
    return module.report()


def test_no_import_cycles(report):
    assert report["cycles"] == []
    assert report["package_cycles"] == []


def test_libraries_never_import_the_application_layer(report):
    assert report["upward_imports"] == []
    assert report["layer_violations"] == []  # and every package stays in its layer (LAYERS)


def test_files_and_functions_stay_small(report):
    assert report["long_files"] == []
    assert report["long_functions"] == []


def test_stages_hand_libraries_typed_configs(report):
    """Issue 14: a stage converts its config once (config/typed.py); no library re-types `int(cfg.x)` per use."""
    assert report["config_casts"] == 0


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    """The rules above could pass vacuously if the checker missed imports: feed it a known bad graph."""
    spec = importlib.util.spec_from_file_location("arch_report_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = {"anima.train.x": {"anima.stages.train"}, "anima.stages.train": {"anima.train.x"}}
    assert module.upward_imports(graph) == [("anima.train.x", "anima.stages.train")]
    assert module.layer_violations({"anima.config.x": {"anima.train.y"}, "anima.train.y": {"anima.config.x"}}) \
        == [("anima.config", "anima.train")]
    (tmp_path / "m.py").write_text("def f():\n    from anima.cli import main\n    import anima.stages.train\n")
    import ast

    found = module._imports(ast.parse((tmp_path / "m.py").read_text()), "anima.x.m", False)
    assert {"anima.cli", "anima.cli.main", "anima.stages.train"} <= found
