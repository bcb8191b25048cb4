# Sourced first by res/reproduce.sh and res/benchmark_nll.sh:
#   source "$(dirname "$0")/run_helper.sh" DEFAULT_RUNS_DIR "$@"
# Sets data (the script's DATA_DIR, which holds MNIST/raw; default data; a relative path is taken from
# the repository root), runs (its RUNS_DIR, else DEFAULT_RUNS_DIR) and py (python, or $PYTHON); moves
# to the repository root; clears the logs and times a previous invocation left in the runs folder;
# defines run.
set -euo pipefail
data=${2:-data}
runs=${3:-$1}
py=${PYTHON:-python}
cd "$(dirname "$0")/.."
mkdir -p "$runs"
rm -f "$runs"/*.seconds "$runs"/*.log

#   run NAME ARGS...   one run_main.py command into $runs/NAME, its output appended to $runs/NAME.log and
#                      its wall seconds added to $runs/NAME.seconds (a run resumed in stages sums them).
run() {
    local name=$1 start before
    shift
    echo "== python run_main.py $*"
    start=$(date +%s)
    "$py" run_main.py "$@" --data_dir "$data" --results_path "$runs/$name" | tee -a "$runs/$name.log"
    before=$(cat "$runs/$name.seconds" 2>/dev/null || echo 0)
    echo $((before + $(date +%s) - start)) > "$runs/$name.seconds"
}
