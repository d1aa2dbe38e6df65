"""The build on the real demo data and crafted files: counts, reuse, weights, rehearsal, persona splits, bad
input (raise vs skip), atomicity, export round trips, and the `anima data` stage as an MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from anima.config.data import DataConfig
from anima.config.stage_schemas import DataStageConfig
from anima.config.typed import typed
from anima.data.dataset import ensure_dataset, load_dataset_ref
from anima.errors import ConfigError, DataError
from tests.helpers import compose_cfg
from tests.helpers import paths_under as paths


def data_cfg(**kw) -> DataConfig:
    return typed({"name": "t", "kind": "chat", **kw}, DataConfig)


def composed_data(overrides: list[str], raw_dir: Path) -> DataStageConfig:
    """`anima data <overrides>`'s config, typed as the stage hands it to the build."""
    return typed(compose_cfg("data", overrides, raw_dir), DataStageConfig)


def chat_line(q: str, a: str) -> str:
    return json.dumps([{"role": "user", "content": q}, {"role": "assistant", "content": a}])


@pytest.fixture(scope="module")
def chat_mix(raw_dir: Path, tmp_path_factory):
    root = tmp_path_factory.mktemp("proj")
    cfg = composed_data(["data=chat_mix"], raw_dir)
    return cfg, paths(root, raw_dir), ensure_dataset(cfg.data, paths(root, raw_dir))


def test_chat_mix_counts_and_layout(chat_mix) -> None:
    cfg, p, ds = chat_mix
    m = ds.manifest
    src = m["counts"]["sources"]
    assert m["counts"]["steps"]["in"] == 2025
    assert src["tech_support"]["in"] == 1050 and src["tech_support"]["deduplicated"] == 10
    assert src["persona"]["domains"].keys() == {"ai", "botprofile"}
    assert ds.path == Path(p.processed_dir) / "chat_mix" / ds.fingerprint
    assert sorted(x.name for x in ds.path.iterdir()) == ["manifest.json", "test-00000.jsonl", "train-00000.jsonl",
                                                        "val-00000.jsonl"]
    train = ds.split("train")
    assert len(train) == m["counts"]["out"]["train"]
    ex = train[0]
    assert set(ex) == {"id", "messages", "source", "domain", "persona", "score"}
    assert all(e["persona"] for e in ds.split("persona_train")) and ds.split("persona_val")
    assert {e["source"] for e in ds.split("persona_train")} == {"persona"}
    ids = {s: {e["id"] for e in ds.split(s)} for s in ("train", "val", "test")}
    assert not ids["train"] & ids["val"] and not ids["val"] & ids["test"]


def test_rebuild_reuses_and_latest(chat_mix) -> None:
    cfg, p, ds = chat_mix
    again = ensure_dataset(cfg.data, p)
    assert again.fingerprint == ds.fingerprint and again.manifest["reused"]
    assert load_dataset_ref("chat_mix", p).fingerprint == ds.fingerprint
    assert load_dataset_ref(f"chat_mix/{ds.fingerprint}", p).path == ds.path
    with pytest.raises(DataError, match="dataset 'nope' has no build"):
        load_dataset_ref("nope", p)


def test_weights_and_rehearsal(chat_mix, raw_dir: Path) -> None:
    cfg, p, base = chat_mix
    cfg2 = composed_data(["data=chat_mix", "data.sources.emotion.weight=3", "data.rehearsal.ratio=0.3"], raw_dir)
    ds = ensure_dataset(cfg2.data, p)
    assert ds.fingerprint != base.fingerprint
    emo = lambda d: sum(e["source"] == "emotion" for e in d.split("train"))  # noqa: E731
    assert emo(ds) == 3 * emo(base)
    train = ds.split("train")
    reh = [e for e in train if e["source"].startswith("rehearsal:persona_hamlet/")]
    assert abs(len(reh) / len(train) - 0.3) < 0.01 and not any(e["persona"] for e in reh)
    assert ds.manifest["rehearsal"]["examples"] == len(reh)
    assert ds.split("val") == base.split("val")  # val keeps the natural distribution
    again = ensure_dataset(cfg2.data, p)
    assert again.fingerprint == ds.fingerprint and again.manifest["reused"]


def test_bad_inputs_raise_one_line_and_skip_counts(tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join([chat_line("hi", "hello"), "{not json", '[{"role": "bot", "content": "x"}]', "[]",
                            chat_line("how are you", "fine thanks")]) + "\n")
    cfg = data_cfg(sources={"c": {"kind": "jsonl_chat", "path": str(f)}}, split={"val": 0.0})
    p = paths(tmp_path)
    with pytest.raises(DataError) as e:
        ensure_dataset(cfg, p)
    assert str(e.value).startswith(f"{f}:2: malformed JSON") and "\n" not in str(e.value)
    assert not any(Path(p.processed_dir, "t").glob("*")) or not list(Path(p.processed_dir, "t").glob(".tmp-*"))
    assert not list(Path(p.processed_dir).glob("t/*/manifest.json"))
    cfg.on_error = "skip"
    ds = ensure_dataset(cfg, p)
    assert ds.manifest["counts"]["steps"]["skipped"] == 3 and ds.manifest["counts"]["out"]["train"] == 2
    assert any("unknown role 'bot'" in x for x in ds.manifest["errors"])
    assert not list(Path(p.processed_dir, "t").glob(".tmp-*"))


@pytest.mark.parametrize("override, message", [
    ({"sources": {"c": {"weight": 0}}}, "data.sources.c.weight=0.0 must be > 0"),
    ({"sources": {"c": {"domain_weights": {"x": -1}}}}, "data.sources.c.domain_weights.x=-1.0 must be > 0"),
    ({"split": {"val": 0.6, "test": 0.5}}, "data.split.val + data.split.test = 1.1 must be < 1"),
    ({"persona": "nobody"}, "data.persona=nobody: not a source name"),
    ({"sources": {"c": {"path": "/no/such/file.jsonl"}}}, "data.sources.c.path: /no/such/file.jsonl does not exist"),
])
def test_config_errors(tmp_path: Path, override: dict, message: str) -> None:
    f = tmp_path / "c.jsonl"
    f.write_text(chat_line("a", "b") + "\n")
    cfg = typed(OmegaConf.merge(data_cfg(sources={"c": {"kind": "jsonl_chat", "path": str(f)}}), override), DataConfig)
    with pytest.raises((ConfigError, DataError), match="^" + message.replace("+", r"\+").replace(".", r"\.")):
        ensure_dataset(cfg, paths(tmp_path))


def test_composed_bad_weight_and_split(raw_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data.sources.emotion.weight=0.0 must be > 0$"):
        compose_cfg("data", ["data=chat_mix", "data.sources.emotion.weight=0"], raw_dir)  # schema range
    cfg = composed_data(["data=chat_mix"], raw_dir)
    cfg.data.sources["emotion"].weight = 0.0  # set past validation: the builder checks too
    with pytest.raises(ConfigError, match=r"^data.sources.emotion.weight=0.0 must be > 0$"):
        ensure_dataset(cfg.data, paths(tmp_path, raw_dir))
    with pytest.raises(ConfigError, match=r"data.split.val \+ data.split.test"):
        compose_cfg("data", ["data=chat_mix", "data.split.val=0.5", "data.split.test=0.5"], raw_dir)


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    import anima.data.build as build

    f = tmp_path / "c.jsonl"
    f.write_text(chat_line("a", "bb") + "\n")
    cfg = data_cfg(sources={"c": {"kind": "jsonl_chat", "path": str(f)}})

    def boom(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(build._Builder, "write_all", boom)
    with pytest.raises(KeyboardInterrupt):
        ensure_dataset(cfg, paths(tmp_path))
    assert list(Path(tmp_path, "processed", "t").iterdir()) == []


def test_clean_dedup_filter_counts(tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl"
    lines = [
        chat_line("<b>Hello</b>  there", "Hi!\u0007 How are **you**?"),
        chat_line("hello there", "hi! how are you?"),  # exact dup after normalization
        chat_line("What is the capital of France, please tell me", "The capital of France is Paris, of course."),
        chat_line("What is the capital of France, please tell me!", "The capital of France is Paris, of course."),
        chat_line("$$$ ### !!!", "%%% ^^^ &&&"),  # symbols
        chat_line("spam", " ".join(["buy now cheap"] * 20)),  # repetition
        chat_line("   ", "answer to nothing"),  # empty user turn -> no exchange
    ]
    f.write_text("\n".join(lines) + "\n")
    ds = ensure_dataset(data_cfg(sources={"c": {"kind": "jsonl_chat", "path": str(f)}}, split={"val": 0.0}),
                        paths(tmp_path))
    st = ds.manifest["counts"]["sources"]["c"]
    assert (st["in"], st["cleaned"], st["exact_dups"], st["near_dups"], st["filtered"]) == (7, 6, 1, 1, 2)
    assert st["drop_reasons"] == {"no_exchange": 1, "repetition": 1, "symbols": 1}
    first = ds.split("train")[0]["messages"]
    assert first == [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi! How are you?"}]


def test_text_dataset_streams_into_shards(tmp_path: Path) -> None:
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(3):
        (d / f"doc{i}.txt").write_text("".join(f"Paragraph {j} of doc {i} says {'word ' * (j % 7)}.\n\n" for j in range(50)))
    (d / "doc1b.txt").write_text((d / "doc1.txt").read_text())  # a duplicate document
    cfg = data_cfg(kind="text", sources={"c": {"kind": "text", "path": str(d)}}, shard_records=40,
                   split={"val": 0.0, "holdout": ["doc2"]}, dedup={"near": False})
    ds = ensure_dataset(cfg, paths(tmp_path))
    out = ds.manifest["counts"]["out"]
    assert out == {"train": 100, "val": 50, "test": 0}
    assert len(list(ds.path.glob("train-*.jsonl"))) == 3
    assert set(ds.split("val")[0]) == {"id", "text", "source", "domain"}
    assert ds.manifest["counts"]["sources"]["c"]["exact_dups"] == 50


def test_export_round_trips(chat_mix, tmp_path: Path) -> None:
    from anima.data.export import write_export
    from anima.data.chat_readers import read_alpaca, read_jsonl_chat, read_qa, read_sharegpt

    _, _, ds = chat_mix
    val = ds.split("val")
    readers = {"sharegpt": read_sharegpt, "alpaca": read_alpaca, "chatml": read_jsonl_chat, "qa": read_qa}
    for fmt, reader in readers.items():
        path = tmp_path / f"val.{'txt' if fmt == 'qa' else 'jsonl'}"
        n = write_export(val, fmt, path)
        back = [r.messages for r in reader([path])]
        assert n == len(back) == len(val), fmt
        if fmt != "qa":  # qa collapses blank lines inside a turn
            assert back == [e["messages"] for e in val], fmt
    chatml = json.loads((tmp_path / "val.jsonl").read_text().splitlines()[0])
    assert chatml["text"].startswith("<|im_start|>user\n")


@pytest.mark.slow
def test_stage_run_logs_to_mlflow(project: Path, raw_dir: Path, capsys) -> None:
    import mlflow

    from anima.stages.data import export, run

    cfg = compose_cfg("data", ["data=chat_mix"], raw_dir)
    run(cfg)
    assert "deduplicated 894" in capsys.readouterr().out
    r = mlflow.search_runs(experiment_names=["anima"], output_format="list")[0]
    assert r.data.tags["anima.stage"] == "data" and r.data.metrics["count/in"] == 2025
    fp = r.data.tags["anima.data_fingerprint"]
    names = {d.dataset.name for d in r.inputs.dataset_inputs}
    assert "chat_mix" in names and "chat_mix.emotion" in names
    art = mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path="dataset/manifest.json")
    assert json.loads(Path(art).read_text())["fingerprint"] == fp
    ecfg = compose_cfg("data_export", ["data=chat_mix", "format=qa", f"out={project}/qa"], raw_dir)
    export(ecfg)
    assert (project / "qa" / "train.txt").read_text().startswith("Q: ")


@pytest.mark.parametrize("kind, content, extra", [
    ("jsonl_chat", "", {}),
    ("jsonl_chat", "\n\n", {}),
    ("jsonl_chat", "{broken\n", {"on_error": "skip"}),
    ("sharegpt", "[]", {}),
    ("qa", "\n", {}),
])
def test_a_source_that_yields_nothing_fails_naming_it(tmp_path: Path, kind: str, content: str, extra: dict) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(chat_line("hello there", "good day to you") + "\n")
    f = tmp_path / {"jsonl_chat": "mine.jsonl", "sharegpt": "mine.json", "qa": "mine.txt"}[kind]
    f.write_text(content)
    cfg = data_cfg(sources={"good": {"kind": "jsonl_chat", "path": str(good)}, "mine": {"kind": kind, "path": str(f)}},
                   **extra)
    with pytest.raises(DataError, match=f"^data source 'mine' \\({f}\\) yielded no records") as e:
        ensure_dataset(cfg, paths(tmp_path))
    assert "\n" not in str(e.value)
    assert [p for p in Path(tmp_path, "processed").rglob("*") if p.is_file()] == []


def test_no_sources_or_an_empty_result_fails(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data.sources: dataset 't' has no sources"):  # e.g. all removed by ~
        ensure_dataset(data_cfg(sources={}), paths(tmp_path))
    f = tmp_path / "c.jsonl"
    f.write_text(chat_line("hi", "hello") + "\n" + chat_line("hi", "hello") + "\n")
    cfg = data_cfg(sources={"c": {"kind": "jsonl_chat", "path": str(f)}}, clean={"min_example_chars": 1000})
    with pytest.raises(DataError, match=r"^data=t: the dataset is empty: .*'c' 2 read \(too_short 2\)$"):
        ensure_dataset(cfg, paths(tmp_path))
    assert [p for p in Path(tmp_path, "processed").rglob("*") if p.is_file()] == []
