#!/usr/bin/env bash
# The conditional VAE's pictures and its test figures beside the plain VAE's at the same dim_z:
#   bash res/conditional.sh [DATA_DIR [RUNS_DIR]]
# DATA_DIR holds MNIST/raw (default data). Each run keeps its full output under RUNS_DIR (default
# results/conditional); the pictures the README shows are copied into res/. docs/pictures.md describes the
# runs and their times.
source "$(dirname "$0")/run_helper.sh" results/conditional "$@"

run cvae_dim_z_2 --conditional True --dim_z 2 --num_epochs 60 --PMLR True --PARR True --iw_samples 1000
run vae_dim_z_2 --dim_z 2 --num_epochs 60 --iw_samples 1000
run cvae_dim_z_20 --conditional True --dim_z 20 --num_epochs 60 --PARR True --PIR True --PRS True --iw_samples 1000
run vae_dim_z_20 --dim_z 20 --num_epochs 60 --PIR True --iw_samples 1000

mkdir -p "$pictures"
for digit in 2 5 8; do
    cp "$(last cvae_dim_z_2 PMLR "_$digit")" "$pictures/cvae_dim_2_mf_$digit.jpg"
done
cp "$(last cvae_dim_z_2 PMLR_map)" "$pictures/cvae_dim_2_cluster.jpg"
cp "$(last cvae_dim_z_2 PARR)" "$pictures/cvae_dim_2_analogies.jpg"
cp "$(last cvae_dim_z_20 PARR)" "$pictures/cvae_dim_20_analogies.jpg"
cp "$(last cvae_dim_z_20 PIR)" "$pictures/cvae_dim_20_interpolation.jpg"
cp "$(last cvae_dim_z_20 PRS)" "$pictures/cvae_dim_20_random.jpg"
cp "$(last vae_dim_z_20 PIR)" "$pictures/dim_20_interpolation.jpg"

"$py" - "$runs" <<'PY'
import csv, json, os, platform, sys
runs = sys.argv[1]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
print(f"\n| model | dim_z | epochs | train -ELBO | test -ELBO | test bound, K=1000 | minutes ({cpu}, {os.cpu_count()} cores) |")
print("|---|---|---|---|---|---|---|")
for n in (2, 20):
    for kind, of in (("vae", "log p(x)"), ("cvae", "log p(x|y)")):
        folder = os.path.join(runs, f"{kind}_dim_z_{n}")
        last = list(csv.DictReader(open(os.path.join(folder, "metrics.csv"))))[-1]
        ll = json.load(open(os.path.join(folder, "evaluation.json")))["test_log_likelihood"]
        minutes = int(open(folder + ".seconds").read()) / 60
        print(f"| {kind.upper()} | {n} | {int(last['epoch']) + 1} | {float(last['train_loss']):.2f} "
              f"| {float(last['test_loss']):.2f} | {of} >= {ll:.2f} | {minutes:.1f} |")
PY
