# Sourced first by res/reproduce.sh, res/conditional.sh and res/benchmark_nll.sh:
#   source "$(dirname "$0")/run_helper.sh" DEFAULT_RUNS_DIR "$@"
# Sets data (the script's DATA_DIR, which holds MNIST/raw; default data; a relative path is taken from
# the repository root), runs (its RUNS_DIR, else DEFAULT_RUNS_DIR), pictures (where the pictures are copied:
# res, or $RES_DIR) and py (python, or $PYTHON); moves to the repository root; moves the logs and times a
# previous invocation left in the runs folder into previous_logs_N; defines run and last.
# RUN_ARGS: flags appended to every run (the last of a repeated flag wins), for a quick check of a script:
#   RUN_ARGS="--num_epochs 1 --n_hidden 16 --iw_samples 2" RES_DIR=/tmp/res bash res/reproduce.sh data /tmp/runs
set -euo pipefail
data=${2:-data}
runs=${3:-$1}
py=${PYTHON:-python}
pictures=${RES_DIR:-res}
read -r -a extra <<< "${RUN_ARGS:-}"
cd "$(dirname "$0")/.."
if [ "$pictures" != res ] && [ -e "$pictures" ] && { [ ! -d "$pictures" ] || [ -n "$(ls -A "$pictures")" ]; }; then
    echo "$0: RES_DIR $pictures must be a new or empty folder (only res, the project's own, is updated)" >&2
    exit 2
fi
mkdir -p "$runs"
if compgen -G "$runs/*.log" > /dev/null || compgen -G "$runs/*.seconds" > /dev/null; then
    n=1  # a previous invocation's logs and times move aside, never deleted (its runs move aside by themselves)
    while [ -e "$runs/previous_logs_$n" ]; do n=$((n + 1)); done
    mkdir "$runs/previous_logs_$n"
    find "$runs" -maxdepth 1 -type f \( -name '*.log' -o -name '*.seconds' \) -exec mv {} "$runs/previous_logs_$n/" \;
fi

#   run NAME ARGS...   one run_main.py command into $runs/NAME, its output appended to $runs/NAME.log and
#                      its wall seconds added to $runs/NAME.seconds (a run resumed in stages sums them).
run() {
    local name=$1 start before
    shift
    echo "== python run_main.py $*"
    start=$(date +%s)
    "$py" run_main.py "$@" --data_dir "$data" --results_path "$runs/$name" "${extra[@]}" | tee -a "$runs/$name.log"
    before=$(cat "$runs/$name.seconds" 2>/dev/null || echo 0)
    echo $((before + $(date +%s) - start)) > "$runs/$name.seconds"
}

#   last NAME KIND [_L]   the picture of KIND (PRR, PMLR, PMLR_map, ...) of run NAME's last drawn epoch (with _L,
#                         a conditional PMLR's of digit L)
last() {
    local name best=-1 n
    for name in "$runs/$1/$2"_epoch_*"${3:-}".jpg; do
        n=${name##*/"$2"_epoch_}
        n=${n%"${3:-}".jpg}
        if [[ $n =~ ^[0-9]+$ ]] && ((10#$n > best)); then best=$((10#$n)); fi
    done
    if ((best < 0)); then
        echo "$0: run $1 drew no $2${3:-} picture" >&2
        return 1
    fi
    printf '%s/%s_epoch_%02d%s.jpg\n' "$runs/$1" "$2" "$best" "${3:-}"
}
