#!/usr/bin/env bash
# Binarized-MNIST likelihood runs for the one-command rows of the README's "Comparison with the
# literature" table, one command per row (the three-stage row's --resume commands are in
# docs/likelihood.md).
#   bash res/benchmark_nll.sh [DATA_DIR [RUNS_DIR]]
# DATA_DIR holds MNIST/raw (default data). Each run keeps its full output under RUNS_DIR
# (default results/nll). Test log p(x) is the importance-weighted bound with K = 5000 on the fixed
# binarization of the 10,000 test images. All of them one after another take about 10 hours on a 2-core CPU;
# each row's training minutes, CPU, threads and torch version are given with it in docs/likelihood.md.
source "$(dirname "$0")/run_helper.sh" results/nll "$@"

# the original's architecture as is: 500-500 units, dim_z 20, dropout keep 0.9, Adam 1e-3
run original --binarize True --num_epochs 100 --iw_samples 5000
# VAE: no dropout, dim_z 50, cosine rate 1e-3 to 1e-5, decoder bias at the mean image
run vae --binarize True --keep_prob 1.0 --dim_z 50 --output_bias mean --lr_schedule cosine --num_epochs 750 \
    --iw_samples 5000
# IWAE: the same model and recipe, trained on the K = 5 importance-weighted bound
run iwae --binarize True --keep_prob 1.0 --dim_z 50 --output_bias mean --lr_schedule cosine --iw_train 5 \
    --num_epochs 330 --iw_samples 5000
# the IWAE's encoder gradient against DReG's, the same recipe over 100 epochs each
run iwae_100 --binarize True --keep_prob 1.0 --dim_z 50 --output_bias mean --lr_schedule cosine --iw_train 5 \
    --num_epochs 100 --iw_samples 5000
run dreg_100 --binarize True --keep_prob 1.0 --dim_z 50 --output_bias mean --lr_schedule cosine --iw_train 5 \
    --iw_gradient dreg --num_epochs 100 --iw_samples 5000
# IWAE with DReG: the same recipe, the doubly reparameterized encoder gradient
run dreg --binarize True --keep_prob 1.0 --dim_z 50 --output_bias mean --lr_schedule cosine --iw_train 5 \
    --iw_gradient dreg --num_epochs 200 --iw_samples 5000
# the 100-epoch DReG run above in bf16: how far bf16 training is from fp32 (same seed)
run dreg_bf16_100 --binarize True --keep_prob 1.0 --dim_z 50 --output_bias mean --lr_schedule cosine --iw_train 5 \
    --iw_gradient dreg --precision bf16 --num_epochs 100 --iw_samples 5000
# IWAE with DReG in bf16 (where the CPU's bf16 products pay) over 680 epochs: the README's best row
run dreg_bf16 --binarize True --keep_prob 1.0 --dim_z 50 --output_bias mean --lr_schedule cosine --iw_train 5 \
    --iw_gradient dreg --precision bf16 --num_epochs 680 --iw_samples 5000

# the table, and the same bound on 1,000 training images (one fixed binarization): the gap to the test
# images' bound is what the model overfits
"$py" - "$runs" "$data" <<'PY'
import csv, json, os, sys
import torch
import checkpoint, mnist_data, vae
runs, data_dir = sys.argv[1:]
data = mnist_data.load_mnist(data_dir, torch.device("cpu"))
train_x = mnist_data.bernoulli(data.train_x[:1000], torch.Generator().manual_seed(mnist_data.BINARIZE_SEED))
print("\n| run | objective | n_hidden | dim_z | keep_prob | epochs | training minutes | test -ELBO "
      "| test NLL, K=5000 | NLL of 1,000 training images, same K |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name in ("original", "vae", "iwae", "iwae_100", "dreg_100", "dreg_bf16_100", "dreg", "dreg_bf16"):
    folder = os.path.join(runs, name)
    if not os.path.exists(os.path.join(folder, "evaluation.json")):
        continue
    rows = list(csv.DictReader(open(os.path.join(folder, "metrics.csv"))))
    evaluation = json.load(open(os.path.join(folder, "evaluation.json")))
    saved = checkpoint.read(os.path.join(folder, "checkpoint.pt")).args
    k, gradient = saved.get("iw_train", 1), saved.get("iw_gradient", "iwae")
    model = vae.load(os.path.join(folder, "checkpoint.pt"))
    torch.manual_seed(0)
    train_nll = -vae.mean_log_likelihood(model, train_x, train_x, evaluation["K"])
    minutes = sum(float(r["seconds"]) for r in rows) / 60
    objective = "-ELBO" if k == 1 else f"IWAE, K = {k}" + (", DReG" if gradient == "dreg" else "")
    objective += ", bf16" if saved.get("precision") == "bf16" else ""
    print(f"| {name} | {objective} | {model.n_hidden} | {model.dim_z} "
          f"| {model.keep_prob} | {len(rows)} | {minutes:.0f} | {float(rows[-1]['test_loss']):.2f} "
          f"| {-evaluation['test_log_likelihood']:.2f} | {train_nll:.2f} |")
PY
