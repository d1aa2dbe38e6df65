"""Stage registry: name -> (primary config, implementation, one-line help).

Kept import-free so `anima --help` stays fast: implementations are imported only when their stage runs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function" taking the composed DictConfig
    help: str
    hydra: bool = True  # composed by Hydra from conf/<name>.yaml; False = plain argv command


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("data", "anima.stages.data:run", "build a versioned dataset (also: data fetch | data export)"),
        Stage("data fetch", "anima.stages.data:fetch_main", "download the demo corpora into data/raw",
              hydra=False),
        Stage("data export", "anima.stages.data:export", "export a built dataset: sharegpt, alpaca, chatml, qa"),
        Stage("tokenizer", "anima.stages.tokenizer:run", "train a SentencePiece tokenizer with a chat template"),
        Stage("pretrain", "anima.stages.train:run", "pretrain a Llama model on plain text"),
        Stage("sft", "anima.stages.train:run", "fine-tune on conversations (assistant-only loss)"),
        Stage("distill", "anima.stages.train:run", "distill a teacher into a student, keeping the persona"),
        Stage("sweep", "anima.stages.sweep:run", "Optuna hyperparameter sweep; trials are child runs"),
        Stage("merge", "anima.stages.merge:run", "rank registry versions by perplexity and merge the best"),
        Stage("eval", "anima.stages.eval:run", "perplexity and generation metrics; compare with champion"),
        Stage("promote", "anima.stages.promote:run", "move the champion alias to a version"),
        Stage("chat", "anima.stages.chat:run", "talk to a model in the terminal, with ratings"),
        Stage("retrain", "anima.stages.retrain:run", "fine-tune the champion on chat feedback"),
        Stage("serve", "anima.stages.serve:run", "OpenAI-compatible HTTP server"),
        Stage("synth", "anima.stages.synth:run", "collect replies from a teacher into a dataset"),
        Stage("export", "anima.stages.export:run", "export a model to GGUF or llama2.c"),
        Stage("pipeline", "anima.stages.pipeline:run", "run a whole study; skips stages already done"),
        Stage("status", "anima.stages.status:run", "datasets, recent runs and registered models"),
        Stage("lineage", "anima.stages.lineage:main", "print a model's lineage tree", hydra=False),
        Stage("ui", "anima.stages.ui:main", "MLflow UI on 127.0.0.1 over this project's store", hydra=False),
    ]
}
