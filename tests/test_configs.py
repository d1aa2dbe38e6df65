"""Every shipped config composes and validates; groups select what they say; the schema refuses bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from anima.config.stage_schemas import STAGE_SCHEMAS
from anima.errors import ConfigError
from anima.paths import conf_dir
from tests.helpers import compose_cfg

PRIMARY = sorted(p.stem for p in conf_dir().glob("*.yaml"))
GROUPS = {"model": ["nano", "tiny", "small", "base"], "device": ["cpu", "gpu", "mps", "auto", "ddp", "fsdp"],
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
    assert (sizes["tiny"].dim, sizes["tiny"].n_layers, sizes["tiny"].n_heads) == (144, 3, 6)
    assert (sizes["tiny"].vocab_size, sizes["tiny"].max_seq_len) == (4096, 256)
    assert (sizes["small"].dim, sizes["small"].n_layers, sizes["small"].n_heads) == (512, 8, 8)
    assert (sizes["base"].dim, sizes["base"].n_layers, sizes["base"].n_heads) == (768, 12, 12)


def test_tokenizer_vocab_follows_the_model():
    assert compose_cfg("pretrain", ["model=nano"]).tokenizer.vocab_size == 512


def test_tiny_builds_as_llama_with_expected_parameter_count():
    from anima.model.build import build_model, count_parameters

    model = build_model(compose_cfg("pretrain", ["model=tiny"]).model)
    assert type(model).__name__ == "LlamaForCausalLM"
    # 4096*144 embeddings (tied) + 3 * (4*144^2 attention + 3*144*384 MLP + 2*144 norms) + 144 final norm
    assert count_parameters(model) == 4096 * 144 + 3 * (4 * 144 * 144 + 3 * 144 * 384 + 2 * 144) + 144


@pytest.mark.parametrize("override,message", [
    (["model.dim=100", "model.n_heads=6"], "divisible"),
    (["model.n_kv_heads=4"], "model.n_heads=6 must be divisible by model.n_kv_heads=4"),
    (["tokenizer.vocab_size=200"], "tokenizer.vocab_size=200 must be >= 262"),
    (["trainer.batch_size=0"], "trainer.batch_size=0 must be >= 1"),
])
def test_range_and_cross_field_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_cfg("pretrain", override)


@pytest.mark.parametrize("word", ["true", "false", "auto"])
def test_true_false_choices_take_the_plain_words(word):
    """`optim.fused=false` arrives as a bool from Hydra's parser; the choice must still be accepted."""
    assert str(compose_cfg("pretrain", [f"optim.fused={word}"]).optim.fused).lower() == word
    with pytest.raises(ConfigError, match="optim.fused='maybe' is not one of auto, true, false"):
        compose_cfg("pretrain", ["optim.fused=maybe"])


def test_paths_default_to_the_project_root(project: Path):
    cfg = compose_cfg("pretrain", [])
    assert cfg.tracking.uri == f"sqlite:///{project}/mlruns/mlflow.db"
    assert cfg.paths.experiments_dir == f"{project}/experiments"


# ---------------------------------------------------------------------------------------------- user config dir
USER_MIX = """name: mine
kind: chat
sources:
  talk:
    kind: jsonl_chat
    path: ${paths.data_dir}/mine/talk.jsonl
split: {val: 0.0, test: 0.0}
"""
USER_PRESET = """# @package _global_
defaults:
  - override /data: mine
  - _self_
optim:
  lr: 0.0042
"""


def test_user_conf_dir_comes_before_the_shipped_configs(project: Path, monkeypatch):
    user = project / "elsewhere"  # ANIMA_USER_CONF moves it out of <root>/conf.local
    monkeypatch.setenv("ANIMA_USER_CONF", str(user))
    (user / "data").mkdir(parents=True)
    (user / "experiment" / "sweeps").mkdir(parents=True)
    (user / "data" / "mine.yaml").write_text(USER_MIX)
    (user / "experiment" / "sweeps" / "study-7-best.yaml").write_text(USER_PRESET)
    (user / "data" / "shakespeare.yaml").write_text(USER_MIX.replace("name: mine", "name: my_plays"))

    cfg = compose_cfg("data", ["data=mine"])  # a user's own mix
    assert cfg.data.name == "mine" and list(cfg.data.sources) == ["talk"]
    assert cfg.data.sources.talk.path == f"{project}/data/mine/talk.jsonl" and cfg.data.sources.talk.weight == 1.0
    cfg = compose_cfg("pretrain", ["model=nano", "+experiment=sweeps/study-7-best"])  # a generated sweep preset
    assert cfg.data.name == "mine" and cfg.optim.lr == 0.0042 and cfg.model.dim == 64
    assert compose_cfg("pretrain", ["model=nano"]).data.name == "my_plays"  # same name: the user's file wins
    assert compose_cfg("data", ["data=chat_mix"]).data.name == "chat_mix"  # shipped ones still there


def test_a_missing_user_conf_dir_changes_nothing(project: Path, monkeypatch):
    monkeypatch.setenv("ANIMA_USER_CONF", str(project / "no" / "such" / "dir"))
    assert compose_cfg("data", ["data=chat_mix"]).data.name == "chat_mix"
    monkeypatch.delenv("ANIMA_USER_CONF")
    assert not (project / "conf.local").exists()
    assert compose_cfg("pretrain", ["model=nano"]).data.name == "shakespeare"
    with pytest.raises(ConfigError, match=r"Could not find 'data/mine'.*options in 'data': chat_mix, my_mix"):
        compose_cfg("data", ["data=mine"])


# ------------------------------------------------------------------------------ data sources on the command line
ADD = "+data.sources.mine={kind: jsonl_chat, path: my.jsonl}"


def test_sources_added_removed_and_reweighted_on_the_command_line(project: Path):
    base = compose_cfg("data", ["data=chat_mix"]).data.sources
    cfg = compose_cfg("data", ["data=chat_mix", ADD, "~data.sources.coding", "data.sources.emotion.weight=3"])
    src = cfg.data.sources
    assert set(src) == set(base) - {"coding"} | {"mine"}
    assert (src.mine.kind, src.mine.path, src.mine.weight, src.mine.split) == ("jsonl_chat", "my.jsonl", 1.0, "train")
    assert src.emotion.weight == 3.0 and base.emotion.weight == 1.0
    # the added entry is a typed source: later overrides of it, dotted adds and interpolations work
    cfg = compose_cfg("data", ["data=chat_mix", "+data.sources.mine={kind: qa, path: '${paths.data_dir}/qa.txt'}",
                               "data.sources.mine.weight=2.5"])
    assert (cfg.data.sources.mine.path, cfg.data.sources.mine.weight) == (f"{project}/data/qa.txt", 2.5)
    cfg = compose_cfg("data", ["data=chat_mix", "+data.sources.mine.kind=alpaca", "+data.sources.mine.path=a.json"])
    assert (cfg.data.sources.mine.kind, cfg.data.sources.mine.path) == ("alpaca", "a.json")


@pytest.mark.parametrize("override, message", [
    ("+data.sources.mine={kind: jsonl_chat, pth: x}", r"^\+data.sources.mine=.*: Key 'pth' not in 'SourceConfig'"),
    ("+data.sources.mine={kind: nope, path: x}", r"^data.sources.mine.kind='nope' is not one of plays, text"),
    ("+data.sources.mine={kind: qa, path: x, weight: -1}", r"^data.sources.mine.weight=-1.0 must be > 0$"),
    ("+data.sources.mine={kind: qa, path: x, weight: lots}", r"could not be converted to Float \(data.sources.mine"),
    ("+data.sources.mine=3", r"^\+data.sources.mine=3: .*not a subclass of SourceConfig"),
    ("+data.sources.mine={kind: qa, path: [x}", r"^\+data.sources.mine=\{kind: qa, path: \[x\}: "),
])
def test_bad_added_source_is_one_line_naming_the_key(project: Path, override: str, message: str):
    with pytest.raises(ConfigError, match=message) as e:
        compose_cfg("data", ["data=chat_mix", override])
    assert "\n" not in str(e.value)


def test_composing_a_stage_stores_only_its_own_schema(monkeypatch):
    """Hydra deep-copies the whole ConfigStore for every group it reads, so a schema stored for nothing makes
    every composition (and `anima <stage> --help`) slower; composing `status` must not store the others."""
    from hydra.core.config_store import ConfigStore

    import anima.config.store as store

    repo = ConfigStore.instance().repo
    monkeypatch.setattr(store, "_stored", {})
    for key in [k for k in repo if k.endswith("_schema.yaml")]:
        monkeypatch.delitem(repo, key)
    cfg = compose_cfg("status", [])
    assert cfg.stage == "status"
    assert sorted(k for k in repo if k.endswith("_schema.yaml")) == ["status_schema.yaml"]
