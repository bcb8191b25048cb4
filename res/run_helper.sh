# Sourced by res/reproduce.sh and res/benchmark_nll.sh (which set $py, $data and $runs):
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
