#!/usr/bin/env bash
# The main job on the embedded demo data, from a fresh clone: set up .venv (once), then run the demo study.
# Extra arguments are Hydra overrides for the pipeline, e.g. `bash scripts/demo.sh force=[merge]`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/anima ] || bash scripts/setup.sh
exec .venv/bin/anima pipeline experiment=demo "$@"
