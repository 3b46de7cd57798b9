#!/usr/bin/env bash
# How model/default (stampflow-sim 0.3.0-sim) was made: five simulated nights across the survey's
# life (three of them nights of first detections, the production mix with 60% bogus; two ordinary
# nights with repeat detections), then training with the default augmentation under a time budget.
#   scripts/train_default.sh [WORKDIR] [FEATURES] [MINUTES]    (defaults: sim_default production 85)
# Takes ~3 min to simulate and MINUTES (+5) to train on 2 cores; writes WORKDIR/model.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure_venv.sh
work="${1:-sim_default}"
features="${2:-production}"
minutes="${3:-85}"
S=.venv/bin/stampflow
nights=(
  "n1 301 20180607 --first-detections"
  "n2 302 20180815 --detections-per-object 2"
  "n3 303 20191101 --first-detections"
  "n4 304 20210901 --detections-per-object 2"
  "n5 305 20250315 --first-detections"
)
dirs=() labels=()
for spec in "${nights[@]}"; do
  read -r name seed night extra <<<"$spec"
  if [ ! -f "$work/$name/labels.csv" ]; then
    # shellcheck disable=SC2086  # $extra holds the night's flags
    $S simulate --n 7000 --out "$work/$name" --seed "$seed" --night "$night" $extra --defects 0.02
  fi
  dirs+=("$work/$name") labels+=("$work/$name/labels.csv")
done
$S train --alerts "${dirs[@]}" --labels "${labels[@]}" --out "$work/model" \
  --name stampflow-sim --version 0.3.0-sim --features "$features" --test-per-class 1000 \
  --max-minutes "$minutes" --seed 2026 \
  --description "issue 24: five simulated nights (2018-06 to 2025-03, three of first detections), nine bogus kinds, augmented"
