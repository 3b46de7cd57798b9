#!/usr/bin/env bash
# How model/default_lsst (stampflow-rubin-sim 0.1.0-sim) was made: 24,000 simulated Rubin first
# detections in an equal class mix (and a held-out night of 5,000 for evaluation), then training
# of the D4-invariant network with the lsst augmentation under a time budget, then the ONNX export.
#   scripts/train_rubin.sh SCHEMA_DIR [WORKDIR] [MINUTES]   (defaults: sim_rubin 80)
# SCHEMA_DIR: the official Rubin schemas (lsst-alert-packet's schema/ tree). ~4 min to simulate
# on 2 cores, MINUTES (+3) to train (about 1.5 s per step of 64 alerts on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure_venv.sh
schemas="${1:?give the Rubin schema directory}"
work="${2:-sim_rubin}"
minutes="${3:-80}"
S=.venv/bin/stampflow
mix="AGN=0.2,SN=0.2,VS=0.2,asteroid=0.2,bogus=0.2"
for spec in "train 24000 101" "test 5000 202"; do
  read -r name n seed <<<"$spec"
  if [ ! -f "$work/$name/labels.csv" ]; then
    $S simulate --survey lsst --n "$n" --out "$work/$name" --seed "$seed" --night 20260305 \
      --first-detections --mix "$mix" --schema-dir "$schemas"
  fi
done
$S train --survey lsst --alerts "$work/train" --labels "$work/train/labels.csv" \
  --out "$work/model" --max-minutes "$minutes" --val-per-class 300 --test-per-class 300 \
  --val-every 25 --seed 2026 --name stampflow-rubin-sim --version 0.1.0-sim \
  --description "issue 27: 24,000 simulated Rubin first detections (stampflow simulate --survey lsst --first-detections, equal class mix, seed 101, simulator 4ef2587 calibrated on the 24 real first detections), D4-invariant, lsst augmentation"
$S evaluate --model "$work/model" --alerts "$work/test" --labels "$work/test/labels.csv" \
  --out "$work/model/evaluation"
$S export-onnx "$work/model"
