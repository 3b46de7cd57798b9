#!/usr/bin/env bash
# The main job on the embedded default: simulate a small sample night (once), then classify it
# with the shipped default model (trained on simulated alerts).
#   ./run_local.sh                 sample night under ./sample_night, outputs under ./output
#   ./run_local.sh PATH...         your own alert files / directories / archives instead
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.stampflow-installed
if [ ! -f "$stamp" ] || ! cmp -s setup.py "$stamp"; then
  echo "Installing stampflow and its pinned stack into .venv (first time: a few minutes)..."
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test]"
  cp setup.py "$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
if [ "$#" -gt 0 ]; then
  inputs=("$@")
else
  if [ ! -f sample_night/labels.csv ]; then
    echo "Simulating the sample night (3,000 alerts, up to 3 detections per object, 2% defects)..."
    .venv/bin/stampflow simulate --n 3000 --out sample_night --seed 42 --night 20240611 \
      --detections-per-object 3 --defects 0.02 --format tar
  fi
  inputs=(sample_night)
fi
.venv/bin/stampflow run --input "${inputs[@]}" --output output
echo
echo "Pictures: output/sky_map.png (sky density per class), output/sn_candidates.html (open in a browser)"
