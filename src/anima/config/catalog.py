"""The stage catalog: every `anima <stage>` command, its config schema, implementation and one-line help.

It lives in the config layer because composition needs it: `compose("sft")` finds the schema of conf/sft.yaml
here, and the config reference lists the stages with their help. Schema and implementation are named as
"module:attribute" strings, so importing the catalog imports nothing (`anima --help` stays fast).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


def load_target(target: str) -> Any:
    """The attribute named by "module:attribute", importing its module."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function" taking the composed DictConfig (a plain command: its argv)
    help: str
    schema: str | None = None  # "module:Class" of conf/<config_name>.yaml's schema; None = plain argv command

    @property
    def hydra(self) -> bool:
        """Composed by Hydra from conf/<config_name>.yaml (else a plain argv command)."""
        return self.schema is not None

    @property
    def config_name(self) -> str:
        return self.name.replace(" ", "_")

    def implementation(self) -> Callable:
        return load_target(self.target)

    def schema_class(self) -> type | None:
        return load_target(self.schema) if self.schema else None


_TRAIN = "stage_schemas:TrainConfig"
#: name, implementation in `anima.stages` ("module:function"), one-line help, schema in `anima.config`
#: ("module:Class"; None: a plain argv command).
_CATALOG: tuple[tuple[str, str, str, str | None], ...] = (
    ("data", "data:run", "build a versioned dataset (also: data fetch | data export)", "stage_schemas:DataStageConfig"),
    ("data fetch", "data:fetch_main", "download the demo corpora into data/raw", None),
    ("data export", "data:export", "export a built dataset: sharegpt, alpaca, chatml, qa", "data_export:DataExportConfig"),
    ("tokenizer", "tokenizer:run", "train a SentencePiece tokenizer with a chat template",
     "stage_schemas:TokenizerStageConfig"),
    ("pretrain", "train:run", "pretrain a Llama model on plain text", _TRAIN),
    ("sft", "train:run", "fine-tune on conversations (assistant-only loss)", _TRAIN),
    ("distill", "train:run", "distill a teacher into a student, keeping the persona", _TRAIN),
    ("sweep", "sweep:run", "Optuna hyperparameter sweep; trials are child runs", "sweep:SweepStageConfig"),
    ("merge", "merge:run", "rank registry versions by perplexity and merge the best", "merge:MergeStageConfig"),
    ("eval", "eval:run", "perplexity and generation metrics; compare with champion", "eval:EvalStageConfig"),
    ("promote", "promote:run", "move the champion alias to a version", "promote:PromoteStageConfig"),
    ("chat", "chat:run", "talk to a model in the terminal, with ratings", "chat:ChatStageConfig"),
    ("retrain", "retrain:run", "fine-tune the champion on chat feedback", "retrain:RetrainStageConfig"),
    ("serve", "serve:run", "OpenAI-compatible HTTP server", "serve:ServeStageConfig"),
    ("synth", "synth:run", "collect replies from a teacher into a dataset", "synth:SynthStageConfig"),
    ("export", "export:run", "export a model to GGUF or llama2.c", "export:ExportStageConfig"),
    ("pipeline", "pipeline:run", "run a whole study; skips stages already done", "pipeline:PipelineStageConfig"),
    ("status", "status:run", "datasets, recent runs and registered models", "stage_schemas:StatusConfig"),
    ("lineage", "lineage:main", "print a model's lineage tree", None),
    ("ui", "ui:main", "MLflow UI on 127.0.0.1 over this project's store", None),
    ("server", "server:run", "a team's MLflow tracking server (PostgreSQL store, serves artifacts)",
     "server:ServerStageConfig"),
)
STAGES: dict[str, Stage] = {
    name: Stage(name, f"anima.stages.{target}", help, schema and f"anima.config.{schema}")
    for name, target, help, schema in _CATALOG
}


def stage_for_config(config_name: str) -> Stage | None:
    """The stage whose primary config is conf/<config_name>.yaml (`data_export` -> `data export`)."""
    return STAGES.get(config_name.replace("_", " "))
