#!/usr/bin/env bash
# Evaluate the runs behind docs/results.md (600 test episodes each, seed 12345).
# Writes RUN/eval-*.json next to each run.
set -uo pipefail
ML=${ML:-.venv/bin/metaloop}
ev() { local run=$1 name=$2; shift 2; [ -d "$run" ] || return 0
       $ML eval "$run" --episodes 600 --json "$@" > "$run/eval-$name.json" && echo "$run $name done"; }
for a in maml fomaml metasgd reptile joint; do ev runs/sinusoid-$a 5shot --shots 5 --steps 1,5,10; done
ev runs/omniglot-5w1s-maml 5w1s
ev runs/omniglot-5w1s-fomaml 5w1s
ev runs/omniglot-20w1s-maml 20w1s
ev runs/omniglot-20w1s-fomaml 20w1s
# relation: evaluated with the preset's mean aggregation (its run dir may predate that key)
for s in "5 1" "20 1" "5 5" "20 5"; do set -- $s
  ev runs/omniglot-relation "$1w$2s-mean" --ways $1 --shots $2 --queries 15 --set 'algorithm.aggregate="mean"'
done
for m in matching siamese finetune; do
  ev runs/omniglot-$m 5w1s --ways 5 --shots 1 --queries 15
  ev runs/omniglot-$m 20w1s --ways 20 --shots 1 --queries 15
  ev runs/omniglot-$m 5w5s --ways 5 --shots 5 --queries 15
  ev runs/omniglot-$m 20w5s --ways 20 --shots 5 --queries 15
done
ev runs/omniglot-protonet-1shot 5w1s --ways 5 --shots 1
ev runs/omniglot-protonet-1shot 20w1s --ways 20 --shots 1
ev runs/omniglot-protonet-1shot 5w5s --ways 5 --shots 5
ev runs/omniglot-protonet-1shot 20w5s --ways 20 --shots 5
ev runs/omniglot-lake-protonet within-alphabet --protocol within-alphabet
ev runs/omniglot-lake-20w1s-maml within-alphabet --protocol within-alphabet
ev runs/omniglot-small1-protonet within-alphabet --protocol within-alphabet
ev runs/omniglot-small2-protonet within-alphabet --protocol within-alphabet
