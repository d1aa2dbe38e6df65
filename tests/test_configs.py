"""Every shipped config composes and validates; groups select what they say; the schema refuses bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from anima.config.stages import STAGE_SCHEMAS
from anima.errors import ConfigError
from anima.paths import conf_dir
from tests.conftest import compose_cfg

PRIMARY = sorted(p.stem for p in conf_dir().glob("*.yaml"))
GROUPS = {"model": ["nano", "tiny", "small", "base"], "device": ["cpu", "gpu", "mps", "auto", "ddp"],
          "tracking": ["local", "server"]}


@pytest.mark.parametrize("stage", PRIMARY)
def test_every_primary_config_composes(stage):
    if stage not in STAGE_SCHEMAS:
        import importlib.util

        if importlib.util.find_spec(f"anima.config.{stage}"):
            import importlib

            importlib.import_module(f"anima.config.{stage}")
    cfg = compose_cfg(stage, [])
    assert cfg.stage in (stage, stage.replace("_", " "))


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_group_options_compose(group, option):
    cfg = compose_cfg("pretrain", [f"{group}={option}"])
    assert cfg[group] is not None


def test_model_sizes_match_the_spec():
    sizes = {o: compose_cfg("pretrain", [f"model={o}"]).model for o in ("tiny", "small", "base")}
    assert (sizes["tiny"].dim, sizes["tiny"].n_layers, sizes["tiny"].n_heads) == (288, 6, 6)
    assert (sizes["tiny"].vocab_size, sizes["tiny"].max_seq_len) == (4096, 256)
    assert (sizes["small"].dim, sizes["small"].n_layers, sizes["small"].n_heads) == (512, 8, 8)
    assert (sizes["base"].dim, sizes["base"].n_layers, sizes["base"].n_heads) == (768, 12, 12)


def test_tokenizer_vocab_follows_the_model():
    assert compose_cfg("pretrain", ["model=nano"]).tokenizer.vocab_size == 512


def test_tiny_builds_as_llama_with_expected_parameter_count():
    from anima.model.build import build_model, count_parameters

    model = build_model(compose_cfg("pretrain", ["model=tiny"]).model)
    assert type(model).__name__ == "LlamaForCausalLM"
    # 4096*288 embeddings (tied) + 6 * (4*288^2 attention + 3*288*768 MLP + 2*288 norms) + 288 final norm
    assert count_parameters(model) == 4096 * 288 + 6 * (4 * 288 * 288 + 3 * 288 * 768 + 2 * 288) + 288


@pytest.mark.parametrize("override,message", [
    (["model.dim=100", "model.n_heads=6"], "divisible"),
    (["model.n_kv_heads=4"], "model.n_heads=6 must be divisible by model.n_kv_heads=4"),
    (["tokenizer.vocab_size=200"], "tokenizer.vocab_size=200 must be >= 262"),
    (["trainer.batch_size=0"], "trainer.batch_size=0 must be >= 1"),
])
def test_range_and_cross_field_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_cfg("pretrain", override)


def test_paths_default_to_the_project_root(project: Path):
    cfg = compose_cfg("pretrain", [])
    assert cfg.tracking.uri == f"sqlite:///{project}/mlruns/mlflow.db"
    assert cfg.paths.experiments_dir == f"{project}/experiments"
