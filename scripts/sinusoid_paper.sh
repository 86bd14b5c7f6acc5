#!/usr/bin/env bash
# Reproduce the sinusoid table of docs/results.md: paper settings (70,000 iterations) for
# MAML, FOMAML, Reptile, Meta-SGD and the joint-training baseline, then 600-episode 5-shot
# evaluation at 1, 5 and 10 inner steps.  Writes runs/sinusoid-<algo>/ and eval-5shot.json.
set -euo pipefail
ML=${ML:-.venv/bin/metaloop}
for algo in ${ALGOS:-maml fomaml metasgd reptile joint}; do
  run=runs/sinusoid-$algo
  start=$(date +%s)
  $ML train configs/sinusoid-$algo.toml --run-dir "$run" --no-progress "$@"
  echo "{\"train_wall_seconds\": $(( $(date +%s) - start ))}" > "$run/wall.json"
  $ML eval "$run" --episodes 600 --shots 5 --steps 1,5,10 --json > "$run/eval-5shot.json"
  $ML eval "$run" --episodes 600 --shots 5 --steps 1,5,10
done
