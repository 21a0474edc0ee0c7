#!/usr/bin/env bash
# Set up, fetch the default model (COCO yolov3-tiny) into ./models and two photos into
# ./samples, and serve the default plugins (zoo, detect, oip) with that model.
# Extra arguments go to `kernel serve`, e.g. scripts/serve.sh --port 9000 --host 0.0.0.0
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python scripts/fetch_models.py models samples
exec .venv/bin/kernel serve --model-dir models "$@"
