#!/usr/bin/env bash
# Re-make every image in res/ from real runs on MNIST, and print the README's results table.
#   bash res/reproduce.sh [DATA_DIR [RUNS_DIR]]
# DATA_DIR holds MNIST/raw (default data). Each run keeps its full output (metrics.csv,
# checkpoint.pt, the pictures of every epoch that drew them, a log) under RUNS_DIR (default results/reproduce); only the
# images named in the README are copied into res/. About 26 minutes on a 2-core Intel Xeon with
# AVX-512 BF16 and AMX (torch 2.14.1, CPU). docs/pictures.md describes the runs.
source "$(dirname "$0")/run_helper.sh" results/reproduce "$@"

run dim_z_2_pmlr --dim_z 2 --num_epochs 60 --PMLR True
run dim_z_2 --dim_z 2 --num_epochs 60 --iw_samples 1000 --PRS True
run dim_z_5 --dim_z 5 --num_epochs 60 --iw_samples 1000 --PRS True
run dim_z_10 --dim_z 10 --num_epochs 60 --iw_samples 1000 --PRS True
run dim_z_20 --dim_z 20 --num_epochs 60 --iw_samples 1000 --PRS True
run denoising --dim_z 20 --add_noise True --num_epochs 40
# the paper's Figure 4 grid from the same trained 2-D model: no training, only the pictures
run dim_z_2_gaussian --resume "$runs/dim_z_2_pmlr/checkpoint.pt" --num_epochs 60 --PMLR True --PMLR_grid gaussian

mkdir -p "$pictures"
cp "$runs/dim_z_20/input.jpg" "$pictures/input.jpg"
for n in 2 5 10 20; do
    cp "$(last "dim_z_$n" PRR)" "$pictures/dim_${n}_sample.jpg"
    cp "$(last "dim_z_$n" PRS)" "$pictures/dim_${n}_random.jpg"
done
cp "$runs/denoising/input_noise.jpg" "$pictures/input_noise.jpg"
cp "$(last denoising PRR)" "$pictures/denoising.jpg"
cp "$(last dim_z_2_pmlr PMLR)" "$pictures/dim_2_mf.jpg"
cp "$(last dim_z_2_pmlr PMLR_map)" "$pictures/dim_2_cluster.jpg"
cp "$(last dim_z_2_gaussian PMLR)" "$pictures/dim_2_mf_gaussian.jpg"
cp "$(last dim_z_2_gaussian PMLR_map)" "$pictures/dim_2_cluster_gaussian.jpg"
cp "$runs/dim_z_20/loss.png" "$pictures/loss.png"

"$py" - "$runs" <<'EOF'
import csv, json, os, platform, sys
runs = sys.argv[1]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
print(f"\n| dim_z | epochs | train -ELBO | test -ELBO | test log p(x), K=1000 | minutes ({cpu}, {os.cpu_count()} cores) |")
print("|---|---|---|---|---|---|")
for n in (2, 5, 10, 20):
    folder = os.path.join(runs, f"dim_z_{n}")
    last = list(csv.DictReader(open(os.path.join(folder, "metrics.csv"))))[-1]
    ll = json.load(open(os.path.join(folder, "evaluation.json")))["test_log_likelihood"]
    minutes = int(open(folder + ".seconds").read()) / 60
    print(f"| {n} | {int(last['epoch']) + 1} | {float(last['train_loss']):.2f} | {float(last['test_loss']):.2f} "
          f"| {ll:.2f} | {minutes:.1f} |")
noise = json.load(open(os.path.join(runs, "denoising", "evaluation.json")))
kl = [float(row["test_divergence"]) for row in csv.DictReader(open(os.path.join(runs, "denoising", "metrics.csv")))]
print(f"\ndenoising, mean absolute error to the clean test images: noisy input {noise['mae_noisy']:.4f}, "
      f"restored {noise['mae_restored']:.4f}; test KL at epochs 1-3: {', '.join(f'{d:.2f}' for d in kl[1:4])}")
EOF
