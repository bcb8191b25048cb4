#!/usr/bin/env bash
# The prepared GPU check, one command that fits in 5 minutes of a GPU machine:
#   bash benchmarks/gpu_check.sh [DATA_DIR [OUT_DIR]]
# DATA_DIR holds MNIST/raw (default data); OUT_DIR (default results/gpu_check_DATE_TIME, new each time) receives
# each run's folder and log; an OUT_DIR that holds an earlier check's logs is refused, never written over.
# With a CUDA device it runs the test suite's device cases on CUDA, the 60-epoch default run, a 3-epoch
# --precision bf16 run, the default epoch's training time (synchronised, median of 5 epochs), and
# --iw_samples 5000 on the 10,000 test images with a dim_z 50 model; then prints one table. Without CUDA it
# runs the same steps on the CPU with fewer epochs and samples (a check that the script works).
# PYTHON names the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-data}
out=${2:-results/gpu_check_$(date +%Y%m%d_%H%M%S)}
py=${PYTHON:-python3}
if compgen -G "$out/*.log" > /dev/null; then
    echo "gpu_check.sh: $out holds an earlier check's logs; give another OUT_DIR" >&2
    exit 2
fi
mkdir -p "$out"
device=$("$py" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
if [ "$device" = cuda ]; then
    epochs=60 bf16_epochs=3 iw_samples=5000 timed_epochs=5 tests="cuda"
else
    epochs=2 bf16_epochs=1 iw_samples=20 timed_epochs=2 tests="device and cpu"
fi
tests=${GPU_CHECK_TESTS:-$tests}  # the pytest -k expression (a quick check of the script narrows it)
rows=()
now() { date +%s.%N; }
elapsed() { "$py" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

# 1. the suite's cases that take a device, on this one
start=$(now)
if "$py" -m pytest -q -k "$tests" tests > "$out/pytest.log" 2>&1; then result=$(tail -1 "$out/pytest.log"); else
    result="FAILED: $(tail -1 "$out/pytest.log")"; fi
rows+=("| pytest -k '$tests' | $result | $(elapsed "$start") |")

# 2. the default run, start-up, evaluation and pictures included; 3. bf16
run() {  # run NAME ARGS...: one run_main.py run into $out/NAME, its log beside it; a table row
    local name=$1 start status=ok
    shift
    start=$(now)
    "$py" run_main.py "$@" --device "$device" --data_dir "$data" --results_path "$out/$name" > "$out/$name.log" 2>&1 \
        || status="FAILED (exit $?, see $out/$name.log)"
    rows+=("| run_main.py $* | $status; $(grep -c '^epoch ' "$out/$name.log" || true) epochs; last: $(grep '^epoch ' \
        "$out/$name.log" | tail -1 | sed 's/.*| test L_tot \([0-9.]*\).*/test -ELBO \1/') | $(elapsed "$start") |")
}
run default --dim_z 20 --num_epochs "$epochs"
run bf16 --dim_z 20 --num_epochs "$bf16_epochs" --precision bf16
run iw --dim_z 50 --binarize True --num_epochs 1 --PRR False --iw_samples "$iw_samples"
iw_line=$(grep '^test log p(x) >=' "$out/iw.log" || echo "none")
rows+=("| --iw_samples $iw_samples on the test images (dim_z 50) | $iw_line | |")

# 4. the default epoch's training time, synchronised: median of timed epochs
epoch=$("$py" - "$data" "$device" "$timed_epochs" <<'PY'
import statistics, sys, time
import torch
import hardware, mnist_data, training, vae
from config import VAEConfig
data_dir, device, epochs = sys.argv[1], torch.device(sys.argv[2]), int(sys.argv[3])
train_x = mnist_data.load_mnist(data_dir, device).train_x
torch.manual_seed(1)
model = vae.VAE(VAEConfig(20, 500)).to(device)
optimizer = training.adam(model, 1e-3)
times = []
for _ in range(epochs):
    hardware.synchronize(device)
    t0 = time.perf_counter()
    training.train_epoch(model, optimizer, mnist_data.batches(train_x, 128))
    hardware.synchronize(device)
    times.append(time.perf_counter() - t0)
print(f"{statistics.median(times):.3f} s (median of {epochs}: {', '.join(f'{t:.3f}' for t in times)})")
PY
)
rows+=("| default epoch, training only (dim_z 20, n_hidden 500, batch 128, 429 steps) | $epoch | |")

where=$("$py" -c "
import torch, hardware
print(torch.cuda.get_device_name() if torch.cuda.is_available() else
      f'{hardware.cpu_name()}, {torch.get_num_threads()} threads', '| torch', torch.__version__)")
echo
echo "device: $device ($where)"
echo
echo "| check | result | seconds |"
echo "|---|---|---|"
printf '%s\n' "${rows[@]}"
