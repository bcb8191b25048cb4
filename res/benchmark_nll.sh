#!/usr/bin/env bash
# Binarized-MNIST likelihood runs for the README's "Comparison with the literature" table.
#   bash res/benchmark_nll.sh DATA_DIR [RUNS_DIR]
# DATA_DIR holds MNIST/raw (here: ../shared/mnist). Each run keeps its full output under RUNS_DIR
# (default results/nll). Test log p(x) is the importance-weighted bound with K = 5000 on the fixed
# binarization of the 10,000 test images. About 55 minutes on a 2-core CPU.
source "$(dirname "$0")/run_helper.sh" results/nll "$@"

# the original's architecture as is: 500-500 units, dim_z 20, dropout keep 0.9, Adam 1e-3
run original --binarize True --num_epochs 100 --iw_samples 5000
# the best found within an hour: no dropout, dim_z 50; Adam's rate lowered twice by resuming
run best --binarize True --keep_prob 1.0 --dim_z 50 --num_epochs 250
run best --resume "$runs/best/checkpoint.pt" --num_epochs 400 --learn_rate 3e-4
run best --resume "$runs/best/checkpoint.pt" --num_epochs 500 --learn_rate 1e-4 --iw_samples 5000

# the table, and the same bound on 1,000 training images (one fixed binarization): the gap to the test
# images' bound is what the model overfits
"$py" - "$runs" "$data" <<'PY'
import csv, json, os, sys
import torch
import mnist_data, vae
runs, data_dir = sys.argv[1:]
data = mnist_data.load_mnist(data_dir, torch.device("cpu"))
train_x = mnist_data.bernoulli(data.train_x[:1000], torch.Generator().manual_seed(mnist_data.BINARIZE_SEED))
print("\n| run | n_hidden | dim_z | keep_prob | epochs | training minutes | test -ELBO | test log p(x), K=5000 "
      "| train log p(x), K=5000, 1,000 images |")
print("|---|---|---|---|---|---|---|---|---|")
for name in ("original", "best"):
    folder = os.path.join(runs, name)
    rows = list(csv.DictReader(open(os.path.join(folder, "metrics.csv"))))
    evaluation = json.load(open(os.path.join(folder, "evaluation.json")))
    model = vae.load(os.path.join(folder, "checkpoint.pt"))
    torch.manual_seed(0)
    train_ll = vae.mean_log_likelihood(model, train_x, train_x, 5000)
    minutes = sum(float(r["seconds"]) for r in rows) / 60
    print(f"| {name} | {model.n_hidden} | {model.dim_z} | {model.keep_prob} | {len(rows)} | {minutes:.0f} "
          f"| {float(rows[-1]['test_loss']):.2f} | {evaluation['test_log_likelihood']:.2f} | {train_ll:.2f} |")
PY
