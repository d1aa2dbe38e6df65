#!/usr/bin/env bash
# The GPU journey on one CUDA GPU, in a fresh project dir (nothing downloaded; demo data from data/raw):
#   pretrain tiny and small -> a local HF Llama base built on the spot (scripts/make_hf_model.py, anima's own
#   tokenizer) -> SFT with LoRA and with QLoRA on it -> a check of the QLoRA adapter merge -> distillation
#   (small into tiny) -> eval -> slerp merge of the two fine-tunes -> GGUF export -> a served reply,
# then one line per run with tokens/s, peak GPU memory and val loss, read back from MLflow (scripts/run_report.py).
#
#   bash scripts/gpu_check.sh                   # on the GPU machine (needs a CUDA torch and `.[qlora]`)
#   bash scripts/gpu_check.sh --compose-only    # anywhere: every anima command composes (`--cfg job`), no work
#   ANIMA_CHECK_DEVICE=cpu STEPS=4 SFT_STEPS=4 HF_DIM=64 HF_LAYERS=2 HF_FFN=128 bash scripts/gpu_check.sh
#                                               # CPU rehearsal of the whole journey; QLoRA's step keeps the
#                                               # hf_qlora preset but not its 4-bit base (model.quant.bits=0)
#
# Environment: STEPS (pretrain steps, 300), SFT_STEPS (sft/distill steps, 100), HF_DIM/HF_LAYERS/HF_FFN (the HF
# base's shape: 1024/8/2816), PORT (serve, 8765), WORK (project dir; default a new temp dir, kept), PY.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-$REPO/.venv/bin/python}
MODE=run
[[ "${1:-}" == "--compose-only" ]] && MODE=compose
STEPS=${STEPS:-300}
SFT_STEPS=${SFT_STEPS:-100}
PORT=${PORT:-8765}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/anima-gpu-check.XXXXXX")}
export ANIMA_ROOT=$WORK MLFLOW_DISABLE_TELEMETRY=true
HF=$WORK/hf-base
COMMON=("paths.raw_dir=$REPO/data/raw")
DEVICE=${ANIMA_CHECK_DEVICE:-gpu}
TRAIN=("device=$DEVICE" "trainer.progress=none" "tracking.log_checkpoints=false" "trainer.num_samples=1")
QLORA=()
[[ $DEVICE == cpu ]] && QLORA=("model.quant.bits=0")  # QLoRA is refused without CUDA: rehearse the rest
SERVE=(serve model=models:/anima-hf-qlora/1 serve.port="$PORT" serve.compile=false)

die() { echo "gpu_check: $*" >&2; exit 2; }

if [[ $MODE == run && $DEVICE != cpu ]]; then
  command -v nvidia-smi >/dev/null 2>&1 || die "no NVIDIA GPU here (nvidia-smi not found); run this on a machine with one CUDA GPU, or use --compose-only"
  nvidia-smi -L 2>/dev/null | grep -q '^GPU' || die "nvidia-smi sees no GPU; run this on a machine with one CUDA GPU"
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || die "torch $("$PY" -c 'import torch; print(torch.__version__)') cannot use the GPU (torch.cuda.is_available() is False): install a CUDA build of torch into .venv (docs/GPU.md)"
  "$PY" -c 'import bitsandbytes, peft' 2>/dev/null || die "QLoRA needs bitsandbytes and peft: .venv/bin/pip install -e '.[qlora]'"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "bf16:", torch.cuda.is_bf16_supported())'
fi
echo "gpu_check: project dir $WORK ($MODE)"

# step NAME anima-args...: run one anima command (or, with --compose-only, only compose it), timed.
step() {
  local name=$1; shift
  if [[ $MODE == compose ]]; then
    "$PY" -m anima "$@" "${COMMON[@]}" --cfg job >/dev/null || die "$name: 'anima $*' does not compose"
    echo "composes: $name"
    return
  fi
  echo "== $name: anima $*"
  local t0=$SECONDS
  "$PY" -m anima "$@" "${COMMON[@]}" || die "$name failed (anima $*)"
  echo "== $name: $((SECONDS - t0)) s"
}

step "pretrain tiny" pretrain model=tiny "${TRAIN[@]}" trainer.max_steps="$STEPS" trainer.val_every=100
step "pretrain small" pretrain model=small "${TRAIN[@]}" trainer.max_steps="$STEPS" trainer.val_every=100

if [[ $MODE == run ]]; then  # a local HF base with the tiny run's tokenizer: what a user downloads, minus the download
  TOK=$(ls -d "$WORK"/experiments/pretrain/*/model | head -1)
  "$PY" scripts/make_hf_model.py "$HF" --tokenizer-from "$TOK" --dim "${HF_DIM:-1024}" --layers "${HF_LAYERS:-8}" \
    --heads 16 --kv-heads 8 --intermediate "${HF_FFN:-2816}" --max-seq-len 512
fi
step "sft lora" sft model=hf model.path="$HF" model.lora.r=16 model.lora.alpha=32 "${TRAIN[@]}" \
  trainer.max_steps="$SFT_STEPS" registry.name=anima-hf-lora
step "sft qlora" sft model=hf_qlora model.path="$HF" "${TRAIN[@]}" trainer.max_steps="$SFT_STEPS" \
  registry.name=anima-hf-qlora "${QLORA[@]}"

if [[ $MODE == run ]]; then  # the QLoRA adapters merged into a full-precision reload of the base
  "$PY" - <<'EOF' || die "the QLoRA model is not a merged full-precision model"
from anima.config.compose import compose
from anima.model.build import count_parameters, load_model_dir
from anima.model.resolve import resolve_model
m = load_model_dir(resolve_model("models:/anima-hf-qlora/1", compose("chat", []).tracking).path)
keys = [k for k in m.state_dict() if "lora" in k]
assert not keys and type(m).__name__ == "LlamaForCausalLM", keys[:3]
print(f"merge: models:/anima-hf-qlora/1 is a plain {type(m).__name__}, {m.dtype}, {count_parameters(m):,} parameters")
EOF
fi
step "distill" distill teacher=models:/anima-small/1 init_from=models:/anima-tiny/1 model=tiny "${TRAIN[@]}" \
  trainer.max_steps="$SFT_STEPS"
step "eval" eval model=models:/anima-hf-qlora/1 eval=smoke registry.name=anima-hf-qlora
step "merge" merge merge=slerp "merge.models=[models:/anima-hf-lora/1,models:/anima-hf-qlora/1]" \
  registry.name=anima-hf-lora
step "export" export model=models:/anima-hf-qlora/1 format=gguf registry.name=anima-hf-qlora

if [[ $MODE == compose ]]; then
  step "serve" "${SERVE[@]}"
  echo "gpu_check: every command composes"
  exit 0
fi

echo "== serve: anima ${SERVE[*]}"
"$PY" -m anima "${SERVE[@]}" "${COMMON[@]}" >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
trap 'kill $SERVE_PID 2>/dev/null || true' EXIT
"$PY" - "$PORT" <<'EOF' || { tail -20 "$WORK/serve.log" >&2; die "no served reply"; }
import json, sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(240):
    try:
        models = json.load(urllib.request.urlopen(base + "/v1/models", timeout=2))
        break
    except OSError:
        time.sleep(0.5)
body = {"model": models["data"][0]["id"], "messages": [{"role": "user", "content": "Good morrow! What is your name?"}],
        "max_tokens": 32, "temperature": 0}
req = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
reply = json.load(urllib.request.urlopen(req, timeout=120))["choices"][0]["message"]["content"]
print(f"served reply: {reply!r}")
EOF
kill "$SERVE_PID" 2>/dev/null || true

echo "== runs (tokens/s, peak GPU memory, val loss)"
"$PY" scripts/run_report.py --root "$WORK"
echo "gpu_check: ok ($WORK)"
