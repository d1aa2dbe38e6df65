"""Evidence for SFT, distillation and the persona guard on the demo data, with fixed step budgets.

    ANIMA_ROOT=/tmp/evidence4 .venv/bin/python scripts/evidence/sft_distill.py [--scale 1.0]

(a) SFT of a small teacher-sized model ("mini": dim 128, 4 layers, context 128) from the pretrained model vs
    from scratch (same tokenizer, same steps): val ppl on the
    conversation split (and persona ppl).
(b) the SFT'd mini as teacher, distilled into a fresh nano student with kd (loss=kd) vs the same nano
    trained with lm only: student val ppl.
(c) the SFT'd mini absorbing off-persona data (chat_mix without its persona source) with persona_guard
    weight 0 vs 0.3 (guard seeds and persona ppl from chat_mix's persona set): persona ppl before/after.

mini uses the nano vocabulary (512) so teacher and student share one tokenizer (sizes are kept small: the
evidence machine is 2 shared CPU cores; pass --model tiny for llama2.c's tiny, ~10x slower). Every run is an MLflow
run under $ANIMA_ROOT/mlruns (`anima ui` to browse); the numbers are printed as a table and written to
$ANIMA_ROOT/evidence_sft_distill.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def kl_to_teacher(cfg, teacher_uri: str, student_uris: list[str], temperature: float) -> dict[str, dict]:
    """Forward KL(teacher || student) on the val split's assistant tokens, at T=1 and at the kd temperature:
    what the kd term optimises, measured on held-out data."""
    import torch

    from anima.model.build import load_model_dir
    from anima.model.resolve import resolve_model
    from anima.train.chat_data import prepare_chat_data
    from anima.train.divergences import distill_loss

    val = prepare_chat_data(cfg, 8, int(cfg.model.max_seq_len)).val_sets["val"]
    batch = {k: torch.stack([val[i][k] for i in range(len(val))]) for k in ("input_ids", "attention_mask", "labels")}
    mask = batch["labels"] != -100

    def logits(uri: str):
        model = load_model_dir(resolve_model(uri, cfg.tracking).path).eval()
        with torch.no_grad():
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[mask]

    t = logits(teacher_uri)
    out = {}
    for uri in student_uris:
        s = logits(uri)
        out[uri] = {"kl_T1": float(distill_loss("forward_kl", t, s, 1.0)),
                    f"kl_T{temperature:g}": float(distill_loss("forward_kl", t, s, temperature))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every step budget")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", choices=["mini", "tiny"], default="mini", help="teacher/SFT model size")
    ap.add_argument("--raw-dir", default=str(REPO / "data" / "raw"))
    ap.add_argument("--kd", nargs="*", default=[],
                    help="overrides of the kd run in (b), after loss=kd (default: the shipped conf/loss/kd.yaml; "
                         "e.g. loss.lm.weight=0.5 loss.kd.weight=0.5 loss.kd.temperature=2)")
    args = ap.parse_args()
    root = os.environ.setdefault("ANIMA_ROOT", "/tmp/evidence4")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from anima.config.compose import compose
    from anima.stages.train import train

    s = args.scale
    steps = {k: max(10, int(v * s)) for k, v in {"pre": 250, "sft": 150, "distill": 150, "absorb": 100}.items()}
    common = [f"paths.raw_dir={args.raw_dir}", f"device.threads={args.threads}", "trainer.progress=none",
              "tracking.log_checkpoints=false", "trainer.num_samples=1", "trainer.val_every=25",
              "tracking.experiment=evidence-sft-distill"]
    big = ["model=tiny", "model.vocab_size=512"] if args.model == "tiny" else \
        ["model=nano", "model.name=mini", "model.dim=128", "model.n_layers=4", "model.n_heads=4", "model.n_kv_heads=4"]
    out: dict = {"steps": steps}

    def run(stage: str, overrides: list[str]):
        t0 = time.time()
        result = train(compose(stage, [*common, *overrides]))
        m = result.metrics
        print(f"  {stage:8s} {result.model_uri:28s} val/ppl={m.get('val/ppl', float('nan')):8.2f} "
              f"persona/ppl={m.get('persona/ppl', float('nan')):8.2f}  ({time.time() - t0:.0f}s)", flush=True)
        return result

    print(f"project {root}; steps {steps}", flush=True)
    pre = run("pretrain", [*big, f"trainer.max_steps={steps['pre']}", "optim.lr=1e-3"])
    out["pretrain"] = {"uri": pre.model_uri, "val_ppl_text": pre.metrics["val/ppl"]}

    print("(a) SFT from pretrained vs from scratch", flush=True)
    sft_args = [*big, f"trainer.max_steps={steps['sft']}", "optim.lr=1e-3"]
    a_pre = run("sft", [*sft_args, f"init_from={pre.model_uri}"])
    a_scr = run("sft", [*sft_args, f"tokenizer.path={pre.model_dir}", f"registry.name=anima-{args.model}-scratch"])
    out["a"] = {k: {"uri": r.model_uri, "val_ppl": r.metrics["val/ppl"], "persona_ppl": r.metrics.get("persona/ppl")}
                for k, r in (("from_pretrained", a_pre), ("from_scratch", a_scr))}

    print(f"(b) {args.model} teacher -> nano student, with vs without kd", flush=True)
    b_args = ["model=nano", f"teacher={a_pre.model_uri}", f"trainer.max_steps={steps['distill']}", "optim.lr=2e-3"]
    b_kd = run("distill", [*b_args, "loss=kd", *args.kd, "registry.name=anima-nano-kd"])
    b_lm = run("distill", [*b_args, "loss=lm", "registry.name=anima-nano-nokd"])
    out["b"] = {"teacher_val_ppl": a_pre.metrics["val/ppl"],
                **{k: {"uri": r.model_uri, "val_ppl": r.metrics["val/ppl"], "persona_ppl": r.metrics.get("persona/ppl")}
                   for k, r in (("with_kd", b_kd), ("without_kd", b_lm))}}

    out["b"]["kl_to_teacher_on_val"] = kl_to_teacher(compose("distill", [*common, *b_args]), a_pre.model_uri,
                                                     [b_kd.model_uri, b_lm.model_uri], 2.0)
    print(f"  KL(teacher || student) on val: {out['b']['kl_to_teacher_on_val']}", flush=True)

    print("(c) absorbing off-persona data with persona_guard weight 0 vs 0.3", flush=True)
    c_args = [*big, f"init_from={a_pre.model_uri}", f"trainer.max_steps={steps['absorb']}", "optim.lr=1e-3",
              "data.name=chat_offpersona", "~data.sources.persona", "data.persona=null",
              "loss.persona_guard.data=chat_mix", f"registry.name=anima-{args.model}-absorb"]
    out["c"] = {"persona_ppl_before": a_pre.metrics.get("persona/ppl")}
    for label, guard in (("guard_0", ["loss.persona_guard.weight=0"]),
                         ("guard_0.3_every5", ["loss=persona_guard", "loss.persona_guard.weight=0.3",
                                               "loss.persona_guard.every=5"]),
                         ("guard_0.3_every1", ["loss=persona_guard", "loss.persona_guard.weight=0.3",
                                               "loss.persona_guard.every=1"])):
        r = run("sft", [*c_args, *guard])
        out["c"][label] = {"uri": r.model_uri, "persona_ppl_after": r.metrics.get("persona/ppl"),
                           "val_ppl_offpersona": r.metrics["val/ppl"]}

    path = Path(root) / "evidence_sft_distill.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    print(f"written {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
