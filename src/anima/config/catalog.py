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


_TRAIN = "anima.config.stage_schemas:TrainConfig"

STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("data", "anima.stages.data:run", "build a versioned dataset (also: data fetch | data export)",
              "anima.config.stage_schemas:DataStageConfig"),
        Stage("data fetch", "anima.stages.data:fetch_main", "download the demo corpora into data/raw"),
        Stage("data export", "anima.stages.data:export", "export a built dataset: sharegpt, alpaca, chatml, qa",
              "anima.config.data_export:DataExportConfig"),
        Stage("tokenizer", "anima.stages.tokenizer:run", "train a SentencePiece tokenizer with a chat template",
              "anima.config.stage_schemas:TokenizerStageConfig"),
        Stage("pretrain", "anima.stages.train:run", "pretrain a Llama model on plain text", _TRAIN),
        Stage("sft", "anima.stages.train:run", "fine-tune on conversations (assistant-only loss)", _TRAIN),
        Stage("distill", "anima.stages.train:run", "distill a teacher into a student, keeping the persona", _TRAIN),
        Stage("sweep", "anima.stages.sweep:run", "Optuna hyperparameter sweep; trials are child runs",
              "anima.config.sweep:SweepStageConfig"),
        Stage("merge", "anima.stages.merge:run", "rank registry versions by perplexity and merge the best",
              "anima.config.merge:MergeStageConfig"),
        Stage("eval", "anima.stages.eval:run", "perplexity and generation metrics; compare with champion",
              "anima.config.eval:EvalStageConfig"),
        Stage("promote", "anima.stages.promote:run", "move the champion alias to a version",
              "anima.config.promote:PromoteStageConfig"),
        Stage("chat", "anima.stages.chat:run", "talk to a model in the terminal, with ratings",
              "anima.config.chat:ChatStageConfig"),
        Stage("retrain", "anima.stages.retrain:run", "fine-tune the champion on chat feedback",
              "anima.config.retrain:RetrainStageConfig"),
        Stage("serve", "anima.stages.serve:run", "OpenAI-compatible HTTP server",
              "anima.config.serve:ServeStageConfig"),
        Stage("synth", "anima.stages.synth:run", "collect replies from a teacher into a dataset",
              "anima.config.synth:SynthStageConfig"),
        Stage("export", "anima.stages.export:run", "export a model to GGUF or llama2.c",
              "anima.config.export:ExportStageConfig"),
        Stage("pipeline", "anima.stages.pipeline:run", "run a whole study; skips stages already done",
              "anima.config.pipeline:PipelineStageConfig"),
        Stage("status", "anima.stages.status:run", "datasets, recent runs and registered models",
              "anima.config.stage_schemas:StatusConfig"),
        Stage("lineage", "anima.stages.lineage:main", "print a model's lineage tree"),
        Stage("ui", "anima.stages.ui:main", "MLflow UI on 127.0.0.1 over this project's store"),
    ]
}


def stage_for_config(config_name: str) -> Stage | None:
    """The stage whose primary config is conf/<config_name>.yaml (`data_export` -> `data export`)."""
    return STAGES.get(config_name.replace("_", " "))
