"""The main journeys, end to end through the real CLI: `anima pipeline experiment=demo|arianna|persona_distill`
in a child process at nano scale (every training step a few optimizer steps, a two-trial sweep, small eval sets),
then checks of the hand-offs recorded in the MLflow store (sweep -> merge -> eval -> promote) and a piped
`anima chat` that answers from the champion the pipeline leaves.

The presets are shrunk only from the command line, exactly as a user would (`<step>.<key>=<value>`): the shared
shrinking lives in `NANO`, `train_step` and `rank_step` below. Each journey takes a few minutes on 2 cores."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.helpers.champion import anima

pytestmark = pytest.mark.slow

REGISTRY = "anima-nano"

# Every step: one thread (2 contended cores), the nano registry (the presets name anima-tiny: model=nano registers
# anima-nano, so the steps that read the registry are pointed at it), the champion reported from there.
NANO = ["device.threads=1", f"registry_name={REGISTRY}"]

# A training step at nano scale: a few optimizer steps, validation and a checkpoint on the way, nothing extra.
TRAIN = {"model": "nano", "trainer.max_steps": 4, "trainer.batch_size": 2, "trainer.val_every": 2,
         "trainer.val_batches": 2, "trainer.ckpt_every": 2, "trainer.num_samples": 0, "trainer.progress": "none",
         "tracking.log_checkpoints": "false"}
# Perplexity ranking (merge, promote) and the eval suite on a few examples.
RANK = {"eval.max_examples": 16, "eval.batch_size": 8}


def train_step(step: str, custom: bool = False) -> list[str]:
    """`custom`: a step with its own name (pipeline.stage_of) is a closed node: `++` sets a key whether or not
    the preset has it."""
    p = "++" if custom else ""
    return [f"{p}{step}.{k}={v}" for k, v in TRAIN.items()]


def rank_step(step: str) -> list[str]:
    return [f"{step}.registry.name={REGISTRY}", *(f"{step}.{k}={v}" for k, v in RANK.items())]


EVAL = [f"eval.registry.name={REGISTRY}", "eval.eval=smoke", "eval.sampling.max_new_tokens=8"]  # 16 examples, 3 prompts

SWEEP_TRIAL = ["model=nano", "init_from=${step:pretrain.model_uri}", "loss=persona_guard",
               *(f"{k}={v}" for k, v in TRAIN.items() if k != "model")]
SWEEP = ["sweep.sweep.overrides=[" + ",".join(f"'{o}'" for o in SWEEP_TRIAL) + "]", "sweep.sweep.n_trials=2",
         "sweep.sweep.n_startup_trials=2", "sweep.sweep.plots=false"]

JOURNEYS = {
    "demo": [*NANO, *train_step("pretrain"), *train_step("sft"), *train_step("distill"), *SWEEP,
             *rank_step("merge"), *EVAL, f"eval.compare=models:/{REGISTRY}@champion",  # the preset's compare,
             *rank_step("promote")],                                                # on this registry
    "arianna": [*NANO, *train_step("pretrain"), *train_step("sft"), *EVAL, *rank_step("promote")],
    "persona_distill": [*NANO, *(o for s in ("teacher_pretrain", "teacher_sft", "student_pretrain", "student_kl",
                                             "student_rkl") for o in train_step(s, custom=True)),
                        *rank_step("merge"), *EVAL, *rank_step("promote")],
}


# --------------------------------------------------------------------------- helpers
def pipeline(root: Path, raw: Path, preset: str, *extra: str, timeout: float = 900):
    t0 = time.monotonic()
    proc = anima(root, "pipeline", f"experiment={preset}", f"paths.raw_dir={raw}", *JOURNEYS[preset], *extra,
                 timeout=timeout)
    secs = time.monotonic() - t0
    print(f"journey {preset}{' ' + ' '.join(extra) if extra else ''}: {secs:.0f}s")
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])
    assert f"✓ pipeline {preset}" in proc.stdout, proc.stdout[-3000:]
    assert f"anima chat model=models:/{REGISTRY}@champion" in proc.stdout, proc.stdout[-3000:]  # what to type next
    return proc


def client(root: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def last_pipeline_steps(c) -> dict[str, tuple[str, str]]:
    """{step: (ran|cached, run id)} of the newest pipeline run, which must have FINISHED."""
    exp = c.get_experiment_by_name("anima")
    run = c.search_runs([exp.experiment_id], "tags.`anima.stage` = 'pipeline'",
                        order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert run.info.status == "FINISHED"
    out = {}
    for step in run.data.tags["anima.pipeline.stages"].split():
        status, run_id = run.data.tags[f"anima.pipeline.step.{step}"].split()
        out[step] = (status, run_id)
    return out


def version_of(c, alias: str) -> str:
    return str(c.get_model_version_by_alias(REGISTRY, alias).version)


def registered(c, run_id: str) -> str:
    """The version a step's run registered (`anima.registered` = models:/<name>/<version>)."""
    uri = c.get_run(run_id).data.tags["anima.registered"]
    name, version = re.fullmatch(r"models:/([^/@]+)/(\d+)", uri).groups()
    assert name == REGISTRY, uri
    return version


def artifact_json(c, run_id: str, path: str, tmp: Path):
    dst = tmp / "downloaded" / run_id
    dst.mkdir(parents=True, exist_ok=True)
    return json.loads(Path(c.download_artifacts(run_id, path, str(dst))).read_text())


def chat_reply(root: Path, prompt: str) -> str:
    """A real `anima chat` on the champion, the prompt piped in; its first reply."""
    proc = anima(root, "chat", f"model=models:/{REGISTRY}@champion", "chat.compile=false", "chat.feedback=null",
                 "sampling.max_new_tokens=12", "sampling.temperature=0.8", "sampling.seed=0",
                 input=f"{prompt}\n/quit\n", timeout=300)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert f"models:/{REGISTRY}@champion" in proc.stdout, proc.stdout[-3000:]
    replies = [m.group(1).strip() for m in re.finditer(r"^anima> (.*)$", proc.stdout, re.M)]
    assert replies and replies[0], proc.stdout[-3000:]
    print(f"chat {prompt!r} -> {replies[0]!r}")
    return replies[0]


def assert_promoted_first_champion(c, steps: dict[str, tuple[str, str]], candidate: str) -> None:
    """A fresh store: eval measured the candidate, promote made it the first champion."""
    eval_run = c.get_run(steps["eval"][1])
    assert eval_run.data.tags["anima.eval.model"].endswith(f"{REGISTRY}/{candidate}") or \
        eval_run.data.tags["anima.eval.model"] == f"models:/{REGISTRY}/{candidate}", eval_run.data.tags
    assert "eval/persona_ppl" in eval_run.data.metrics and "eval/val_ppl" in eval_run.data.metrics
    promote = c.get_run(steps["promote"][1])
    assert promote.data.params["decision"] == "no champion"
    assert promote.data.params["decision.candidate_version"] == candidate
    assert version_of(c, "champion") == candidate


# --------------------------------------------------------------------------- the journeys
def test_demo_journey(project, raw_dir, tmp_path):
    pipeline(project, raw_dir, "demo")
    c = client(project)
    steps = last_pipeline_steps(c)
    assert list(steps) == ["pretrain", "sft", "distill", "sweep", "merge", "eval", "promote"]
    assert {s for s, _ in steps.values()} == {"ran"}

    # sweep -> merge: the sweep's registered top trials (child runs of the sweep) are among merge's inputs
    sweep_run = c.get_run(steps["sweep"][1])
    top = sweep_run.data.tags["anima.sweep.registered"].split()
    assert top
    for uri in top:
        v = c.get_model_version(REGISTRY, uri.rsplit("/", 1)[1])
        assert c.get_run(v.run_id).data.tags["mlflow.parentRunId"] == sweep_run.info.run_id
    merge_id = steps["merge"][1]
    ranked = {r["model"] for r in artifact_json(c, merge_id, "ranking.json", tmp_path)}
    inputs = {f"models:/{REGISTRY}/{registered(c, steps[s][1])}" for s in ("sft", "distill")} | set(top)
    assert ranked == inputs, (ranked, inputs)
    # merge -> @candidate -> eval -> promote -> @champion
    candidate = registered(c, merge_id)
    assert version_of(c, "candidate") == candidate
    assert c.get_model_version(REGISTRY, candidate).tags["stage"] == "merge"
    assert c.get_run(steps["eval"][1]).data.tags["anima.eval.compare"] == ""  # no champion yet: compare skipped
    assert_promoted_first_champion(c, steps, candidate)
    assert chat_reply(project, "What are you?")

    # A second study on the same store: another merge recipe re-runs merge and what follows (the rest is reused);
    # eval now compares the new candidate against the champion (skipped on the first run: none yet), and promote
    # decides between them.
    # min_examples below the demo's 16-18 held-out persona conversations, so promote decides on the evidence
    pipeline(project, raw_dir, "demo", "merge.merge.method=uniform", "promote.promote.min_examples=5")
    steps2 = last_pipeline_steps(c)
    assert {s: st for s, (st, _) in steps2.items()} == {"pretrain": "cached", "sft": "cached", "distill": "cached",
                                                        "sweep": "cached", "merge": "ran", "eval": "ran",
                                                        "promote": "ran"}
    assert all(steps2[s][1] == steps[s][1] for s in ("pretrain", "sft", "distill", "sweep"))
    new = registered(c, steps2["merge"][1])
    assert new != candidate and version_of(c, "candidate") == new
    ev = c.get_run(steps2["eval"][1])
    assert ev.data.tags["anima.eval.model"].endswith(f"/{new}"), ev.data.tags
    assert ev.data.tags["anima.eval.compare"].endswith(f"/{candidate}"), ev.data.tags
    for k in ("persona_ppl", "val_ppl"):
        assert f"eval/{k}" in ev.data.metrics and f"compare/{k}" in ev.data.metrics
    p = c.get_run(steps2["promote"][1]).data.params
    assert p["decision.candidate_version"] == new and p["decision.champion_version"] == candidate
    better = float(p["decision.difference"]) < 0  # persona_ppl: lower is better
    wins = better and float(p["decision.ci_high"]) < 0  # ... and the interval of the difference excludes zero
    assert p["decision"] == ("wins" if wins else "within noise" if better else "loses"), p
    assert int(p["decision.n"]) >= 5 and float(p["decision.ci_low"]) <= float(p["decision.difference"])
    if wins:
        assert version_of(c, "champion") == new and version_of(c, "previous") == candidate
    else:
        assert version_of(c, "champion") == candidate
    print(f"demo: second promote {p['decision']} (persona_ppl v{new} {p['decision.candidate_value']} vs "
          f"v{candidate} {p['decision.champion_value']})")
    assert chat_reply(project, "Are you a robot?")


def test_arianna_journey(project, raw_dir):
    pipeline(project, raw_dir, "arianna")
    c = client(project)
    steps = last_pipeline_steps(c)
    assert list(steps) == ["pretrain", "sft", "eval", "promote"] and {s for s, _ in steps.values()} == {"ran"}
    # sft (init_from the pretrained model, Q/A template) registers the candidate that eval and promote take
    sft = registered(c, steps["sft"][1])
    pre = registered(c, steps["pretrain"][1])
    tags = c.get_model_version(REGISTRY, sft).tags
    assert tags["parent"].endswith(f"{REGISTRY}/{pre}") and tags["chat_template"] == "qa", tags
    assert version_of(c, "candidate") == sft
    assert_promoted_first_champion(c, steps, sft)
    assert chat_reply(project, "What are you?")


def test_persona_distill_journey(project, raw_dir, tmp_path):
    pipeline(project, raw_dir, "persona_distill")
    c = client(project)
    steps = last_pipeline_steps(c)
    assert list(steps) == ["teacher_pretrain", "teacher_sft", "student_pretrain", "student_kl", "student_rkl",
                           "merge", "eval", "promote"]
    assert {s for s, _ in steps.values()} == {"ran"}
    teacher = registered(c, steps["teacher_sft"][1])
    students = [registered(c, steps[s][1]) for s in ("student_kl", "student_rkl")]
    for s, kind in zip(students, ("forward_kl", "reverse_kl")):
        v = c.get_model_version(REGISTRY, s)
        assert v.tags["teacher"].endswith(f"{REGISTRY}/{teacher}"), v.tags
        assert c.get_run(v.run_id).data.params["loss.kd.kind"] == kind
    merge_id = steps["merge"][1]
    ranked = {r["model"] for r in artifact_json(c, merge_id, "ranking.json", tmp_path)}
    assert ranked == {f"models:/{REGISTRY}/{s}" for s in students}
    candidate = registered(c, merge_id)
    assert version_of(c, "candidate") == candidate
    assert_promoted_first_champion(c, steps, candidate)
    assert chat_reply(project, "Who made you?")
