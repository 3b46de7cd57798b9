#!/usr/bin/env bash
# The main job on the embedded default: simulate a small sample night (once), then classify it
# with the shipped default model (trained on simulated alerts).
#   ./run_local.sh                 sample night under ./sample_night, outputs under ./output
#   ./run_local.sh PATH...         your own alert files / directories / archives instead
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/ensure_venv.sh
source scripts/ensure_venv.sh
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
