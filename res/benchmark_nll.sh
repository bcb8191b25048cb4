#!/usr/bin/env bash
# Binarized-MNIST likelihood runs for the README's "Comparison with the literature" table.
#   bash res/benchmark_nll.sh DATA_DIR [RUNS_DIR]
# DATA_DIR holds MNIST/raw (here: ../shared/mnist). Each run keeps its full output under RUNS_DIR
# (default results/nll). Test log p(x) is the importance-weighted bound with K = 5000 on the fixed
# binarization of the 10,000 test images. About 75 minutes on a 2-core CPU.
source "$(dirname "$0")/run_helper.sh" results/nll "$@"

# the original's architecture as is: 500-500 units, dim_z 20, dropout keep 0.9, Adam 1e-3
run original --binarize True --num_epochs 100 --iw_samples 5000
# the best found within an hour: no dropout, dim_z 50; Adam's rate lowered twice by resuming
run best --binarize True --keep_prob 1.0 --dim_z 50 --num_epochs 250
run best --resume "$runs/best/checkpoint.pt" --num_epochs 400 --learn_rate 3e-4
run best --resume "$runs/best/checkpoint.pt" --num_epochs 500 --learn_rate 1e-4 --iw_samples 5000

"$py" - "$runs" <<'PY'
import csv, json, os, sys
import torch
runs = sys.argv[1]
print("\n| run | n_hidden | dim_z | keep_prob | epochs | training minutes | test -ELBO | test log p(x), K=5000 |")
print("|---|---|---|---|---|---|---|---|")
for name in ("original", "best"):
    folder = os.path.join(runs, name)
    rows = list(csv.DictReader(open(os.path.join(folder, "metrics.csv"))))
    evaluation = json.load(open(os.path.join(folder, "evaluation.json")))
    model_args = torch.load(os.path.join(folder, "checkpoint.pt"), weights_only=True)["model_args"]
    minutes = sum(float(r["seconds"]) for r in rows) / 60
    print(f"| {name} | {model_args['n_hidden']} | {model_args['dim_z']} | {model_args['keep_prob']} | {len(rows)} "
          f"| {minutes:.0f} | {float(rows[-1]['test_loss']):.2f} | {evaluation['test_log_likelihood']:.2f} |")
PY
