"""run_main.py: flags and usage errors, then whole runs on synthetic MNIST (in this process, except where a
real process matters: signals, the terminal's progress bar, the exit status of a usage error)."""
import contextlib
import errno
import fcntl
import io
import json
import os
import pty
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time

import numpy as np
import pytest
import torch
from PIL import Image

import cli
import plot_utils
import report
import results_folder
import run_main
import signals
import training
import vae
from checkpoint import FORMAT, METRICS
from conftest import (
    DEVICES,
    FAST,
    ROOT,
    edited,
    epochs_printed,
    metrics,
    one_line_error,
    run,
    saved_epoch,
    set_field,
    usage_error,
    with_data,
    without_seconds,
)

DENOISING_2D = ["--dim_z", "2", "--PMLR", "True", "--add_noise", "True"]


# whole runs

@pytest.fixture(scope="module")
def first_run(mnist_dir, tmp_path_factory):
    """Two epochs of the denoising 2-D model with PMLR and PRS, into a folder that already holds a user file."""
    results = tmp_path_factory.mktemp("first") / "results"
    results.mkdir()
    (results / "keep.txt").write_text("mine")
    done = run(*DENOISING_2D, "--PRS", "True", "--num_epochs", "2", *FAST, "--results_path", results)
    assert done.status == 0, done.stderr
    return str(results), done


def test_end_to_end_writes_every_file(first_run):
    results, done = first_run
    assert epochs_printed(done.stdout) == [0, 1], done.stdout
    assert done.stderr == ""  # no progress bar or warning when stderr is not a terminal
    sizes = {"input.jpg": (280, 280), "input_noise.jpg": (280, 280), "PRR_epoch_00.jpg": (280, 280),
             "PRR_epoch_01.jpg": (280, 280), "PMLR_epoch_00.jpg": (560, 560), "PMLR_epoch_01.jpg": (560, 560),
             "PMLR_map_epoch_01.jpg": (800, 600), "PRS_epoch_00.jpg": (280, 280), "PRS_epoch_01.jpg": (280, 280)}
    for name, size in sizes.items():
        with Image.open(os.path.join(results, name)) as img:
            assert img.size == size, name
    assert os.path.getsize(os.path.join(results, "loss.png")) > 0
    with open(os.path.join(results, "keep.txt")) as f:
        assert f.read() == "mine"
    rows = metrics(results)
    assert list(rows[0]) == list(METRICS)
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert float(rows[1]["test_loss"]) == pytest.approx(
        float(rows[1]["test_nll"]) + float(rows[1]["test_divergence"]), abs=1e-3)
    checkpoint = torch.load(os.path.join(results, "checkpoint.pt"), weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["model_args"] == {"dim_z": 2, "n_hidden": 64, "keep_prob": 0.9,
                                                                  "conditional": False}
    assert not any(name.endswith(".tmp") for name in os.listdir(results))
    noise = re.search(r"^denoising: mean absolute error to the clean test images: noisy ([\d.]+), restored ([\d.]+)$",
                      done.stdout, re.M)
    assert noise, done.stdout
    evaluation = json.loads(open(os.path.join(results, "evaluation.json")).read())
    assert evaluation["mae_noisy"] == pytest.approx(float(noise.group(1)), abs=1e-4)
    assert evaluation["mae_restored"] == pytest.approx(float(noise.group(2)), abs=1e-4)
    # unclamped noise: x * m1 + m2 is |x - x_hat| = x (m1 = 0, m2 = 0), 1 - x or x, or 1 on average over masks
    assert 0.4 < evaluation["mae_noisy"] < 0.8


def test_noisy_input_picture_is_stretched_from_its_minimum_to_its_maximum(first_run):
    results, _ = first_run
    clean = np.asarray(Image.open(os.path.join(results, "input.jpg")), dtype=float)
    noisy = np.asarray(Image.open(os.path.join(results, "input_noise.jpg")), dtype=float)
    assert np.abs(clean - noisy).mean() > 50
    # values 0..2 drawn 0..255: salt on the background (1) is mid-grey, salt on a bright stroke (2) white
    background = clean < 30
    assert 100 < np.median(noisy[background & (noisy > 60)]) < 160
    assert noisy[clean > 240].max() > 240


def test_prior_samples_are_the_same_z_every_epoch_and_leave_training_alone(first_run, mnist_dir, tmp_path):
    results, _ = first_run
    again = run(*DENOISING_2D, "--num_epochs", "2", *FAST, "--results_path", tmp_path / "again")
    assert again.status == 0, again.stderr
    assert without_seconds(metrics(tmp_path / "again")) == without_seconds(metrics(results))  # --PRS True or not
    assert not any(name.startswith("PRS_") for name in os.listdir(tmp_path / "again"))
    model = vae.load(os.path.join(results, "checkpoint.pt"))
    z = torch.randn(100, 2, generator=torch.Generator().manual_seed(1))
    expected = np.asarray(Image.open(os.path.join(results, "PRS_epoch_01.jpg")), dtype=float)
    drawn = np.asarray(Image.open(io.BytesIO(grid_jpeg(model.decode(z)))), dtype=float)
    assert np.abs(expected - drawn).max() < 3  # the decoded z of generator seed --seed, JPEG aside


def grid_jpeg(images):
    buffer = io.BytesIO()
    plot_utils.save_grid(buffer, images, 10, 10)
    return buffer.getvalue()


def test_same_seed_same_metrics_and_other_seed_differs(first_run, mnist_dir, tmp_path):
    results, _ = first_run
    other = run(*DENOISING_2D, "--num_epochs", "1", *FAST, "--seed", "2",
                "--results_path", tmp_path / "other")
    assert other.status == 0, other.stderr
    assert without_seconds(metrics(tmp_path / "other"))[0] != without_seconds(metrics(results))[0]


def test_resume_continues_as_if_never_stopped(first_run, mnist_dir, tmp_path):
    results, _ = first_run
    straight = run(*DENOISING_2D, "--num_epochs", "3", *FAST, "--results_path", tmp_path / "straight")
    assert straight.status == 0, straight.stderr
    # dim_z, n_hidden and add_noise come from the checkpoint; --num_epochs is the total
    resumed = run("--PMLR", "True", "--num_epochs", "3", "--batch_size", "64", "--PMLR_n_samples", "100",
                  "--results_path", tmp_path / "resumed",
                  "--resume", os.path.join(results, "checkpoint.pt"))
    assert resumed.status == 0, resumed.stderr
    assert epochs_printed(resumed.stdout) == [2]
    assert "resumed from" in resumed.stdout and "is now" not in resumed.stdout
    assert without_seconds(metrics(tmp_path / "resumed")) == without_seconds(metrics(tmp_path / "straight"))
    assert os.path.exists(tmp_path / "resumed" / "PRR_epoch_02.jpg")
    assert saved_epoch(tmp_path / "resumed") == 3


def test_resume_refuses_other_data_or_model_and_prints_changed_rates(first_run, capsys, mnist_dir, tmp_path,
                                                                    monkeypatch):
    results, _ = first_run
    good = os.path.join(results, "checkpoint.pt")
    for flag, value in (("--add_noise", "False"), ("--binarize", "True"), ("--keep_prob", "1.0"),
                        ("--dim_z", "3"), ("--n_hidden", "500")):
        err = usage_error(capsys, ["--resume", good, flag, value])
        assert f"{flag} {value if flag != '--add_noise' else False}" in err and "differs from the checkpoint's" in err
    args = cli.parse_args(["--resume", good, "--add_noise", "True", "--num_epochs", "3"]).settings
    assert (args.add_noise, args.binarize, args.keep_prob, args.dim_z) == (True, False, 0.9, 2)
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # where a default ./results would appear
    done = run("--learn_rate", "5e-4", "--batch_size", "32", "--precision", "bf16", "--num_epochs", "3",
               "--PMLR_n_samples", "100", "--resume", copy / "checkpoint.pt")
    assert done.status == 0, done.stderr
    assert "--learn_rate is now 0.0005 (the checkpoint's run used 0.001)" in done.stdout
    assert "--batch_size is now 32 (the checkpoint's run used 64)" in done.stdout
    assert "--precision is now bf16 (the checkpoint's run used fp32)" in done.stdout
    assert saved_epoch(copy) == 3  # no --results_path: the checkpoint's own folder
    assert os.listdir(tmp_path / "cwd") == []  # and no ./results


def test_resume_with_finished_epochs_only_plots_and_evaluates(first_run, mnist_dir, tmp_path):
    results, _ = first_run
    done = run("--PMLR", "True", "--num_epochs", "2", "--batch_size", "64", "--PMLR_n_samples", "100",
               "--iw_samples", "5", "--results_path", tmp_path,
               "--resume", os.path.join(results, "checkpoint.pt"))
    assert done.status == 0, done.stderr
    assert epochs_printed(done.stdout) == []
    assert re.search(r"^test log p\(x\) >= -\d+\.\d\d nats \(K=5, [\d.]+ s\)$", done.stdout, re.M), done.stdout
    assert os.path.exists(tmp_path / "PRR_epoch_01.jpg") and os.path.exists(tmp_path / "PMLR_map_epoch_01.jpg")
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["K"] == 5 and evaluation["test_log_likelihood"] < 0


def test_bad_checkpoints_are_one_line_usage_errors(first_run, tmp_path, capsys):
    results, _ = first_run
    good = os.path.join(results, "checkpoint.pt")
    paths = {n: tmp_path / f"{n}.pt" for n in ("truncated", "garbage", "foreign", "pickled", "format_only")}
    with open(good, "rb") as f:
        paths["truncated"].write_bytes(f.read()[:5000])
    paths["garbage"].write_bytes(os.urandom(3000))
    torch.save({"state_dict": {"w": torch.zeros(2)}}, paths["foreign"])
    torch.save(torch.nn.Linear(2, 2), paths["pickled"])
    torch.save({"format": FORMAT}, paths["format_only"])
    cases = [(["--resume", str(paths["truncated"])], "corrupt"), (["--resume", str(paths["garbage"])], "corrupt"),
             (["--resume", str(paths["foreign"])], "not a checkpoint"),
             (["--resume", str(paths["pickled"])], "corrupt"),
             (["--resume", str(paths["format_only"])], "incomplete checkpoint"),
             (["--resume", good, "--dim_z", "3"], "--dim_z 3 differs"),
             (["--resume", good, "--num_epochs", "1"], "fewer than the 2 epochs")]
    for argv, needle in cases:
        err = usage_error(capsys, argv)
        assert needle in err and err.count("\n") == 1, (argv, err)
    plan = cli.parse_args(["--resume", good, "--dim_z", "2"])
    assert (plan.settings.dim_z, plan.settings.n_hidden, plan.checkpoint.epoch, plan.settings.results_path) == (
        2, 64, 2, results)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(first_run, mnist_dir, tmp_path):
    results, _ = first_run
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    before = (copy / "checkpoint.pt").read_bytes()
    done = run("--learn_rate", "1e38", "--num_epochs", "4", "--batch_size", "64", "--resume", copy / "checkpoint.pt")
    one_line_error(done, 1, "non-finite loss in epoch 2")
    assert str(copy / "checkpoint.pt") in done.stderr
    assert (copy / "checkpoint.pt").read_bytes() == before


# the results folder: earlier runs, locks, stale files, failed writes

def test_a_fresh_run_moves_an_earlier_run_aside(first_run, mnist_dir, tmp_path):
    results, _ = first_run
    folder = tmp_path / "results"
    shutil.copytree(results, folder)
    (folder / "notes.txt").write_text("mine")
    (folder / "PRR_epoch_01.jpg.bak").write_text("mine too")
    earlier = results_folder.ResultsFolder(str(folder)).outputs()
    assert "checkpoint.pt" in earlier and "PRS_epoch_01.jpg" in earlier and "keep.txt" not in earlier
    for n in (1, 2):
        done = run("--dim_z", "3", "--num_epochs", "1", *FAST, "--results_path", folder)
        assert done.status == 0, done.stderr
        assert f"moved the earlier run's {len(earlier) if n == 1 else 6} files in {folder} to " \
               f"{folder / f'previous_run_{n}'}" in done.stdout
    assert sorted(os.listdir(folder / "previous_run_1")) == earlier
    with open(os.path.join(results, "checkpoint.pt"), "rb") as f:
        assert (folder / "previous_run_1" / "checkpoint.pt").read_bytes() == f.read()
    assert sorted(os.listdir(folder / "previous_run_2")) == ["PRR_epoch_00.jpg", "checkpoint.pt", "input.jpg",
                                                              "loss.png", "metrics.csv", "settings.json"]
    assert [r["epoch"] for r in metrics(folder)] == ["0"] and saved_epoch(folder) == 1
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "keep.txt").read_text() == "mine"
    assert (folder / "PRR_epoch_01.jpg.bak").read_text() == "mine too"


def test_a_locked_folder_stops_a_second_run(mnist_dir, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    with open(folder / results_folder.LOCK_NAME, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running run_main.py holds it
        done = run("--num_epochs", "1", *FAST, "--results_path", folder)
    one_line_error(done, 1, f"another run is writing to {folder}")
    assert sorted(os.listdir(folder)) == [results_folder.LOCK_NAME]
    done = run("--num_epochs", "1", "--PRR", "False", *FAST, "--results_path", folder)
    assert done.status == 0, done.stderr  # released with the file: a dead run leaves no lock behind


def test_stale_temporary_files_are_removed_and_others_kept(mnist_dir, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    for name in ("checkpoint.pt.tmp", "metrics.csv.tmp", "PRR_epoch_03.jpg.tmp", "notes.tmp"):
        (folder / name).write_text("stale")
    done = run("--num_epochs", "1", "--PRR", "False", *FAST, "--results_path", folder)
    assert done.status == 0, done.stderr
    assert [n for n in os.listdir(folder) if n.endswith(".tmp")] == ["notes.tmp"]


def failing_open(monkeypatch, fails, error):
    """Make results_folder.py's open raise error (after writing a little) for the files fails(path) picks."""
    def fake_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if "w" in mode and fails(str(path)):
            f.write(b"partial")
            f.close()
            raise error
        return f
    monkeypatch.setattr(results_folder, "open", fake_open, raising=False)


def test_a_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(mnist_dir, tmp_path, monkeypatch):
    folder = tmp_path / "results"
    writes = []
    failing_open(monkeypatch, lambda p: p.endswith("checkpoint.pt.tmp") and writes.append(p) or len(writes) > 1,
                 OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    done = run("--num_epochs", "3", *FAST, "--results_path", folder)
    one_line_error(done, 1, f"cannot write {folder / 'checkpoint.pt'}: no space left on device")
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]
    assert saved_epoch(folder) == 1  # epoch 1's checkpoint failed; epoch 0's stays


def test_a_read_only_folder_is_one_line(mnist_dir, tmp_path, monkeypatch):
    folder = tmp_path / "results"
    failing_open(monkeypatch, lambda p: True, OSError(errno.EROFS, os.strerror(errno.EROFS)))
    done = run("--num_epochs", "1", *FAST, "--results_path", folder)
    one_line_error(done, 1, f"cannot write {folder / 'input.jpg'}: read-only file system")
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]


# binarized MNIST, dropout, precision

def test_binarized_run_saves_its_flags_and_resume_keeps_them(mnist_dir, tmp_path, capsys):
    folder = tmp_path / "binary"
    done = run("--binarize", "True", "--keep_prob", "1.0", "--num_epochs", "1", "--iw_samples", "3", *FAST,
               "--results_path", folder)
    assert done.status == 0, done.stderr
    checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert checkpoint["args"]["binarize"] is True and checkpoint["model_args"]["keep_prob"] == 1.0
    with Image.open(folder / "input.jpg") as img:  # the pictures' inputs are the binary test images
        assert set(np.unique(np.asarray(img))) <= set(range(0, 40)) | set(range(215, 256))
    err = usage_error(capsys, ["--resume", str(folder / "checkpoint.pt"), "--binarize", "False"])
    assert "--binarize False differs from the checkpoint's True" in err
    args = cli.parse_args(["--resume", str(folder / "checkpoint.pt"), "--num_epochs", "2"]).settings
    assert args.binarize is True and args.keep_prob == 1.0


def test_bf16_run_trains_in_bf16_and_evaluates_in_fp32(mnist_dir, tmp_path, monkeypatch):
    products = {"train": set(), "evaluate": set(), "iw": set()}

    def spying(name, real):
        def spy(model, *args, **kwargs):
            hook = model.decoder.net[0].register_forward_hook(lambda m, i, out: products[name].add(out.dtype))
            try:
                return real(model, *args, **kwargs)
            finally:
                hook.remove()
        return spy
    monkeypatch.setattr(training, "train_epoch", spying("train", training.train_epoch))
    monkeypatch.setattr(training, "evaluate", spying("evaluate", training.evaluate))
    monkeypatch.setattr(vae, "iw_log_likelihood", spying("iw", vae.iw_log_likelihood))
    folder = tmp_path / "bf16"
    done = run("--precision", "bf16", "--num_epochs", "2", "--PRR", "False", "--iw_samples", "3", *FAST,
               "--results_path", folder)
    assert done.status == 0, done.stderr
    assert products == {"train": {torch.bfloat16}, "evaluate": {torch.float32}, "iw": {torch.float32}}
    checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert checkpoint["args"]["precision"] == "bf16"
    assert all(t.dtype == torch.float32 for t in checkpoint["model"].values())  # fp32 master weights


# real processes: signals and the terminal

@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signals_stop_between_batches_and_keep_the_checkpoint(mnist_dir, tmp_path, monkeypatch, signum, status):
    results = tmp_path / "results"
    real_save = run_main.save_epoch

    def save_then_signal(s, run_, *rest):
        real_save(s, run_, *rest)
        if run_.epoch == 2:
            os.kill(os.getpid(), signum)  # heard at epoch 2's first batch
    monkeypatch.setattr(run_main, "save_epoch", save_then_signal)
    done = run("--dim_z", "2", "--num_epochs", "1000", "--PRR", "False", *FAST, "--results_path", results)
    one_line_error(done, status, "interrupted in epoch 2; the checkpoint of the 2 finished epochs is")
    assert epochs_printed(done.stdout) == [0, 1]
    assert (f"continue with: {signals.python_command()} run_main.py --dim_z 2 --num_epochs 1000" in done.stderr
            and f"--resume {results / 'checkpoint.pt'}" in done.stderr)
    assert saved_epoch(results) == 2 == len(metrics(results))


def test_a_real_process_survives_a_full_standard_output_and_stops_on_a_signal_with_its_status(mnist_dir, tmp_path):
    """What only a real process shows: its standard output on a full disk costs one warning line, and a signal
    ends it with the signal's exit status and one line that says how to continue."""
    results = tmp_path / "results"
    script = os.path.join(ROOT, "run_main.py")
    with open("/dev/full", "w") as full:
        child = subprocess.Popen([sys.executable, script, *with_data(["--dim_z", "2", "--num_epochs", "1000", "--PRR",
                                                                     "False", *FAST, "--results_path", results])],
                                 cwd=tmp_path, stdout=full, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (results / "checkpoint.pt").exists():
            time.sleep(0.1)
        time.sleep(0.3)
        child.send_signal(signal.SIGHUP)  # a closed terminal
        _, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 129, stderr
    warning, error = stderr.splitlines()
    assert warning.startswith("run_main.py: warning: cannot write to standard output (no space left on device)")
    finished = saved_epoch(results)
    assert finished >= 1 and finished == len(metrics(results))
    assert error.startswith(f"run_main.py: error: interrupted in epoch {finished}; ")
    assert f"continue with: {shlex.join([signals.python_command(), script])} " in error


def test_progress_bars_only_on_a_terminal(mnist_dir, tmp_path, monkeypatch):
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0x0: no room for a bar
    os.set_blocking(controller, False)
    with os.fdopen(terminal, "w") as tty:
        monkeypatch.setattr(sys, "stderr", tty)  # a terminal, as a user's
        status = run_main_status(["--dim_z", "2", "--num_epochs", "1", "--PRR", "False", "--iw_samples", "20", *FAST,
                                  "--data_dir", str(mnist_dir), "--results_path", str(tmp_path)])
        tty.flush()
        shown = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(controller, 65536):
                shown += chunk
    os.close(controller)
    assert status == 0
    assert re.search(rb"epoch 0: +\d+%\|.*\| \d/4 \[", shown), shown  # tqdm's bar over the 4 batches
    assert re.search(rb"test log p\(x\), K=20: +\d+%\|.*\| \d+/200 \[", shown), shown  # and over the test images


def run_main_status(argv):
    """run_main.main(argv) in this process, its output where it goes: the exit status."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            run_main.main(argv)
    except SystemExit as e:
        return e.code
    return 0


# training options: schedule, warm-up, IWAE

# metrics.csv of `--num_epochs 3 --PRR False --iw_samples 5` + FAST on the synthetic data, pinned: a default
# run (none of the training options) must keep giving these numbers
BEFORE_OPTIONS = [
    [652.852173, 642.792847, 10.059309, 600.725037, 587.633606, 13.091404],
    [609.809448, 594.436584, 15.372868, 565.801636, 548.865173, 16.936489],
    [577.768311, 558.898254, 18.870049, 534.335632, 514.720337, 19.615316],
]
BEFORE_OPTIONS_LOG_PX = -529.9668676757813


def test_a_default_run_gives_the_numbers_it_gave_before_the_training_options(mnist_dir, tmp_path):
    done = run("--num_epochs", "3", "--PRR", "False", "--iw_samples", "5", *FAST, "--results_path", tmp_path)
    assert done.status == 0, done.stderr
    figures = [[float(row[k]) for k in METRICS[1:-1]] for row in metrics(tmp_path)]
    assert figures == [pytest.approx(row, rel=1e-5) for row in BEFORE_OPTIONS]
    log_px = json.loads((tmp_path / "evaluation.json").read_text())["test_log_likelihood"]
    assert log_px == pytest.approx(BEFORE_OPTIONS_LOG_PX, rel=1e-5)


OPTIONS = ["--lr_schedule", "cosine", "--lr_min", "1e-4", "--learn_rate", "3e-3", "--kl_warmup", "2",
           "--iw_train", "3", "--iw_gradient", "dreg", "--output_bias", "mean", "--dim_z", "3", "--PRR", "False", *FAST]


def weights(folder):
    return torch.load(os.path.join(folder, "checkpoint.pt"), weights_only=True)["model"]


def test_a_run_with_the_options_stopped_and_resumed_equals_an_uninterrupted_one(mnist_dir, tmp_path, monkeypatch):
    straight = run(*OPTIONS, "--num_epochs", "4", "--results_path", tmp_path / "straight")
    assert straight.status == 0, straight.stderr
    line = r"^epoch 0: -L_3 [\d.]+ L_likelihood [\d.]+ L_divergence [\d.]+ \| test L_tot .* \| lr 3\.00e-03 \|"
    assert re.search(line, straight.stdout, re.M), straight.stdout
    real_save = run_main.save_epoch

    def save_then_interrupt(args, run_, *rest):
        real_save(args, run_, *rest)
        if run_.epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after epoch 1 is saved: heard at epoch 2's first batch
    monkeypatch.setattr(run_main, "save_epoch", save_then_interrupt)
    stopped = run(*OPTIONS, "--num_epochs", "4", "--results_path", tmp_path / "resumed")
    one_line_error(stopped, 130, "interrupted in epoch 2")
    monkeypatch.setattr(run_main, "save_epoch", real_save)
    # the options come from the checkpoint
    resumed = run("--num_epochs", "4", *FAST, "--PRR", "False", "--resume", tmp_path / "resumed" / "checkpoint.pt")
    assert resumed.status == 0, resumed.stderr
    assert "is now" not in resumed.stdout
    assert without_seconds(metrics(tmp_path / "resumed")) == without_seconds(metrics(tmp_path / "straight"))
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_rate_and_the_warmup_weights_reach_each_epoch(mnist_dir, tmp_path, monkeypatch):
    seen = []
    real_epoch = training.train_epoch

    def spy(model, optimizer, batches, precision, k, kl_weight, **kwargs):
        seen.append((optimizer.param_groups[0]["lr"], k, list(kl_weight)))
        return real_epoch(model, optimizer, batches, precision, k, kl_weight, **kwargs)
    monkeypatch.setattr(training, "train_epoch", spy)
    done = run(*OPTIONS, "--num_epochs", "3", "--results_path", tmp_path)
    assert done.status == 0, done.stderr
    assert [lr for lr, _, _ in seen] == pytest.approx([3e-3, (3e-3 + 1e-4) / 2, 1e-4])
    assert {k for _, k, _ in seen} == {3}
    assert [w for _, _, w in seen] == [[0.0, 0.125, 0.25, 0.375], [0.5, 0.625, 0.75, 0.875], [1.0] * 4]


def test_a_resumed_run_keeps_the_checkpoints_training_flags(mnist_dir, tmp_path):
    done = run(*OPTIONS, "--precision", "bf16", "--batch_size", "32", "--num_epochs", "1", "--results_path", tmp_path)
    assert done.status == 0, done.stderr
    checkpoint = str(tmp_path / "checkpoint.pt")
    args = cli.parse_args(["--resume", checkpoint, "--num_epochs", "2"]).settings
    assert (args.learn_rate, args.batch_size, args.precision, args.lr_schedule, args.lr_min, args.kl_warmup,
            args.iw_train, args.output_bias, args.iw_gradient) == (3e-3, 32, "bf16", "cosine", 1e-4, 2, 3, "mean",
                                                                   "dreg")
    again = run("--num_epochs", "3", "--iw_train", "2", "--kl_warmup", "2", "--PRR", "False", "--resume", checkpoint)
    assert again.status == 0, again.stderr
    assert "--iw_train is now 2 (the checkpoint's run used 3)" in again.stdout
    assert "--kl_warmup" not in again.stdout  # given, but the same
    assert ("the cosine schedule now runs over 3 epochs (the checkpoint's run planned 1): epoch 1 trains at 0.00155 "
            "where it would have at 0.003") in again.stdout


# the results folder, checkpoints, signals and messages under misuse

def test_resuming_a_backup_branches_and_keeps_the_folders_newer_run(mnist_dir, tmp_path):
    folder = tmp_path / "R"
    base = ["--PRR", "True", *FAST]
    assert run(*base, "--num_epochs", "2", "--results_path", folder).status == 0
    shutil.copy(folder / "checkpoint.pt", folder / "epoch2_backup.pt")
    assert run(*base, "--num_epochs", "4", "--resume", folder / "checkpoint.pt").status == 0
    newer = (folder / "checkpoint.pt").read_bytes()
    branch = run(*base, "--num_epochs", "3", "--resume", folder / "epoch2_backup.pt")
    assert branch.status == 0, branch.stderr
    assert "moved the earlier run's" in branch.stdout
    aside = folder / "previous_run_1"
    assert (aside / "checkpoint.pt").read_bytes() == newer  # the 4-epoch run is whole, beside the branch
    assert [r["epoch"] for r in metrics(aside)] == ["0", "1", "2", "3"]
    assert os.path.exists(aside / "PRR_epoch_03.jpg") and not os.path.exists(folder / "PRR_epoch_03.jpg")
    assert [r["epoch"] for r in metrics(folder)] == ["0", "1", "2"] and saved_epoch(folder) == 3
    assert (folder / "epoch2_backup.pt").exists()  # the user's file stays where it was


def test_resuming_a_link_to_another_folders_checkpoint_branches(mnist_dir, tmp_path, monkeypatch):
    base = ["--PRR", "False", *FAST]
    a, b = tmp_path / "A", tmp_path / "B"
    assert run(*base, "--num_epochs", "2", "--results_path", a).status == 0
    assert run(*base, "--num_epochs", "1", "--dim_z", "3", "--results_path", b).status == 0
    a_checkpoint, b_checkpoint = (a / "checkpoint.pt").read_bytes(), (b / "checkpoint.pt").read_bytes()
    os.symlink("../A/checkpoint.pt", b / "from_A.pt")
    monkeypatch.chdir(b)
    done = run(*base, "--num_epochs", "3", "--resume", "from_A.pt")
    assert done.status == 0, done.stderr
    assert (b / "previous_run_1" / "checkpoint.pt").read_bytes() == b_checkpoint  # B's own run, moved aside
    assert saved_epoch(b) == 3 and (a / "checkpoint.pt").read_bytes() == a_checkpoint
    os.symlink("checkpoint.pt", b / "own.pt")  # a link to the folder's own checkpoint continues in place
    done = run(*base, "--num_epochs", "4", "--resume", "own.pt")
    assert done.status == 0 and "moved" not in done.stdout and not (b / "previous_run_2").exists()
    assert saved_epoch(b) == 4


def one_element_moments(checkpoint):
    for v in checkpoint["optimizer"]["state"].values():
        v["exp_avg"], v["exp_avg_sq"] = torch.zeros(1), torch.zeros(1)


def test_a_crafted_optimizer_state_is_a_usage_error_not_a_crash(small_run, mnist_dir, tmp_path):
    path = edited(small_run / "checkpoint.pt", one_element_moments, tmp_path / "X" / "checkpoint.pt")
    done = run("--num_epochs", "3", "--resume", path)
    one_line_error(done, 2, "optimizer state does not fit its model")


TAMPERED = {
    "keep_prob '0.5'": (set_field("model_args", "keep_prob", value="0.5"), "invalid model arguments"),
    "keep_prob None": (set_field("model_args", "keep_prob", value=None), "invalid model arguments"),
    "keep_prob list": (set_field("model_args", "keep_prob", value=[0.5]), "invalid model arguments"),
    "rng short": (set_field("rng", "cpu", value=torch.zeros(10, dtype=torch.uint8)), "damaged checkpoint"),
    "rng float": (lambda c: c["rng"].update(cpu=c["rng"]["cpu"].float()), "damaged checkpoint"),
    "history strings": (set_field("history", value=["epoch 0"]), "bad history"),
    "history missing key": (lambda c: c["history"][0].pop("test_loss"), "bad history"),
    "learn_rate text": (set_field("args", "learn_rate", value="fast"), "bad args learn_rate"),
    "precision unknown": (set_field("args", "precision", value="fp8"), "bad args precision: must be one of fp32, bf16"),
    "batch_size float": (set_field("args", "batch_size", value=64.0), "bad args batch_size"),
}


@pytest.mark.parametrize("damage", list(TAMPERED))
def test_tampered_loadable_checkpoints_are_usage_errors_at_load(small_run, tmp_path, capsys, damage):
    change, needle = TAMPERED[damage]
    path = edited(small_run / "checkpoint.pt", change, tmp_path / "X" / "checkpoint.pt")
    err = usage_error(capsys, ["--resume", str(path), "--num_epochs", "2"])
    assert needle in err and err.count("\n") == 1, err


def test_a_non_finite_test_loss_stops_the_run_and_saves_nothing_diverged(mnist_dir, tmp_path):
    done = run("--batch_size", "256", "--n_hidden", "64", "--num_epochs", "2", "--learn_rate", "1e30",
               "--iw_samples", "2", "--results_path", tmp_path)
    one_line_error(done, 1, "non-finite")
    assert "no epoch finished" in done.stderr
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "evaluation.json").exists()
    assert not (tmp_path / "metrics.csv").exists()


def test_a_usage_error_found_with_the_data_leaves_the_folder_as_it_was(small_run, mnist_dir, tmp_path):
    folder = tmp_path / "R"
    shutil.copytree(small_run, folder)
    before = sorted(os.listdir(folder))
    done = run("--num_epochs", "3", "--batch_size", "60000", "--results_path", folder)
    one_line_error(done, 2, "--batch_size 60000 is larger than")
    assert sorted(os.listdir(folder)) == before
    crafted = edited(small_run / "checkpoint.pt", one_element_moments, tmp_path / "X" / "checkpoint.pt")
    done = run("--num_epochs", "3", "--resume", crafted, "--results_path", folder)
    one_line_error(done, 2, "optimizer state")
    assert sorted(os.listdir(folder)) == before


def test_moving_an_earlier_run_is_all_or_nothing(small_run, mnist_dir, tmp_path, monkeypatch):
    folder = tmp_path / "R"
    shutil.copytree(small_run, folder)
    before = sorted(os.listdir(folder))
    real_replace, calls = os.replace, []

    def failing_third(src, dst):
        calls.append(src)
        if len(calls) == 3 and "previous_run_1" in str(dst):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", failing_third)
    done = run("--num_epochs", "1", *FAST, "--results_path", folder)
    one_line_error(done, 1, "cannot tidy --results_path")
    assert sorted(os.listdir(folder)) == before  # all back in place, no half-filled previous_run_1
    calls.clear()

    def interrupting(src, dst):  # Ctrl-C while the earlier run is being moved
        if not calls:
            os.kill(os.getpid(), signal.SIGINT)
        calls.append(src)
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", interrupting)
    done = run("--num_epochs", "1", "--PRR", "False", *FAST, "--results_path", folder)
    one_line_error(done, 130, "interrupted")
    assert sorted(os.listdir(folder / "previous_run_1")) == [n for n in before if results_folder.is_output(n)]


def test_only_the_runs_own_names_are_moved_aside(small_run, mnist_dir, tmp_path):
    folder = tmp_path / "R"
    shutil.copytree(small_run, folder)
    for mine in ("input_vacation.jpg", "PRR_epoch_best.jpg", "metrics.csv.bak", "checkpoint.pt.old"):
        (folder / mine).write_text("mine")
    done = run("--num_epochs", "1", "--PRR", "False", *FAST, "--results_path", folder)
    assert done.status == 0, done.stderr
    for mine in ("input_vacation.jpg", "PRR_epoch_best.jpg", "metrics.csv.bak", "checkpoint.pt.old"):
        assert (folder / mine).read_text() == "mine"
    assert results_folder.is_output("PRR_epoch_07.jpg") and results_folder.is_output("PMLR_map_epoch_123.jpg")
    assert not results_folder.is_output("input_vacation.jpg") and not results_folder.is_output("PRR_epoch_7.jpg")


def test_a_lock_file_that_is_a_link_is_not_followed(mnist_dir, tmp_path):
    folder = tmp_path / "R"
    folder.mkdir()
    os.symlink(tmp_path / "elsewhere", folder / results_folder.LOCK_NAME)
    done = run("--num_epochs", "1", *FAST, "--results_path", folder)
    one_line_error(done, 1, f"{results_folder.LOCK_NAME} in it is a symbolic link")
    assert not (tmp_path / "elsewhere").exists()


def test_an_evaluation_announces_its_time_and_stops_on_a_signal(small_run, mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(run_main, "LONG_EVALUATION_S", 0)
    done = run("--num_epochs", "1", "--PRR", "False", "--iw_samples", "3", *FAST, "--results_path", tmp_path)
    assert re.search(r"^test log p\(x\) with K=3 on 200 images: about \d+ s$", done.stdout, re.M), done.stdout
    real = vae.iw_log_likelihood

    def signalled(*args, on_chunk=None, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, on_chunk=on_chunk, **kwargs)
    monkeypatch.setattr(vae, "iw_log_likelihood", signalled)
    done = run("--num_epochs", "1", "--PRR", "False", "--iw_samples", "1000000000", *FAST, "--resume",
               small_run / "checkpoint.pt", "--results_path", tmp_path / "eval")
    one_line_error(done, 143, "interrupted in the final evaluation")


def test_ctrl_c_while_starting_is_one_line(mnist_dir, tmp_path):
    child = subprocess.Popen([sys.executable, os.path.join(ROOT, "run_main.py"), "--num_epochs", "1", *FAST,
                              "--results_path", tmp_path / "R"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # torch is still importing: it takes seconds on a 2-core CPU
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    assert stderr.startswith("run_main.py: error: interrupted") and stderr.count("\n") == 1, stderr
    assert not (tmp_path / "R" / "checkpoint.pt").exists()


def test_a_checkpoint_with_the_older_column_names_resumes(small_run, mnist_dir, tmp_path):
    def older(checkpoint):
        for row in checkpoint["history"]:
            row["train_likelihood"], row["test_likelihood"] = row.pop("train_nll"), row.pop("test_nll")
    path = edited(small_run / "checkpoint.pt", older, tmp_path / "X" / "checkpoint.pt")
    done = run("--num_epochs", "2", "--PRR", "False", "--resume", path)
    assert done.status == 0, done.stderr
    rows = metrics(path.parent)
    assert list(rows[0]) == list(METRICS) and all(row["test_nll"] for row in rows) and len(rows) == 2


# what a run refuses, and what it survives

def test_a_resume_refuses_a_checkpoint_another_run_wrote_after_it_was_read(small_run, mnist_dir, tmp_path,
                                                                          monkeypatch):
    """Run B reads F's checkpoint; run A writes F's next epoch before B takes F's lock: B must not go on and
    write over A's epoch."""
    folder = tmp_path / "F"
    shutil.copytree(small_run, folder)
    newer = run("--num_epochs", "2", "--PRR", "False", *FAST, "--results_path",
                tmp_path / "A")
    assert newer.status == 0, newer.stderr
    real_build = run_main.build_run

    def then_another_run_writes(plan, data):
        built = real_build(plan, data)
        shutil.copy(tmp_path / "A" / "checkpoint.pt", folder / "checkpoint.pt")  # A's epoch 2, as A writes it
        return built
    monkeypatch.setattr(run_main, "build_run", then_another_run_writes)
    done = run("--num_epochs", "4", "--learn_rate", "3e-4", *FAST, "--PRR", "False", "--resume",
               folder / "checkpoint.pt")
    one_line_error(done, 1, "was written by another run after this one read it; run the command again")
    assert (folder / "checkpoint.pt").read_bytes() == (tmp_path / "A" / "checkpoint.pt").read_bytes()
    assert not any(name.startswith("previous_run") for name in os.listdir(folder))
    assert len(metrics(folder)) == 1  # the folder's own metrics.csv, untouched


def test_a_signal_while_a_resume_only_draws_is_heard(small_run, mnist_dir, tmp_path, monkeypatch):
    real_grid = plot_utils.save_grid

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real_grid(*args, **kwargs)
    monkeypatch.setattr(plot_utils, "save_grid", signalled)
    done = run("--num_epochs", "1", "--PRS", "True", "--PRR", "False", *FAST, "--results_path", tmp_path,
               "--resume", small_run / "checkpoint.pt")
    one_line_error(done, 130, f"interrupted while drawing the pictures; {small_run / 'checkpoint.pt'} holds all 1")


def test_only_the_raw_idx_files_are_read(mnist_dir, tmp_path):
    """torchvision's legacy processed/*.pt files, if a folder has them, are never read in place of the raw files."""
    data = tmp_path / "data"
    shutil.copytree(mnist_dir, data)
    processed = data / "MNIST" / "processed"
    processed.mkdir()
    for name, n in (("training.pt", 5256), ("test.pt", 200)):
        torch.save((torch.zeros(n, 28, 28, dtype=torch.uint8), torch.zeros(n, dtype=torch.long)), processed / name)
    runs = [run("--num_epochs", "1", "--PRR", "False", *FAST, "--data_dir", d, "--results_path", tmp_path / str(i))
            for i, d in enumerate((mnist_dir, data))]
    assert [r.status for r in runs] == [0, 0]
    assert without_seconds(metrics(tmp_path / "0")) == without_seconds(metrics(tmp_path / "1"))


ALLOCATOR = RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                         "you tried to allocate 31000000000 bytes. Error code 12 (Cannot allocate memory)")


def test_out_of_memory_is_one_line_naming_its_cause(small_run, mnist_dir, tmp_path, monkeypatch):
    import mnist_data

    def no_memory(*args, **kwargs):
        raise ALLOCATOR
    monkeypatch.setattr(training, "train_epoch", no_memory)
    done = run("--num_epochs", "1", "--PRR", "False", *FAST, "--results_path", tmp_path / "a")
    one_line_error(done, 1, "out of memory while training (try a smaller --n_hidden, --batch_size or --iw_train)")
    monkeypatch.setattr(mnist_data, "load_mnist", no_memory)
    done = run("--num_epochs", "1", "--PRR", "False", *FAST, "--results_path", tmp_path / "b")
    one_line_error(done, 1, f"out of memory loading MNIST from {mnist_dir}")
    assert not (tmp_path / "b").exists()


def test_resume_messages_say_what_is_true(small_run, mnist_dir, tmp_path, capsys):
    def older_and_cosine(checkpoint):  # a run planned over 5 epochs, from before the training options
        for name in ("lr_schedule", "iw_train", "kl_warmup", "lr_min", "iw_gradient"):
            checkpoint["args"].pop(name)
    path = edited(small_run / "checkpoint.pt", older_and_cosine, tmp_path / "X" / "checkpoint.pt")
    done = run("--num_epochs", "2", "--lr_schedule", "cosine", "--iw_train", "2", "--kl_warmup", "1", *FAST,
               "--PRR", "False", "--resume", path)
    assert done.status == 0, done.stderr
    for line in ("--lr_schedule is now cosine (the checkpoint's run used constant)",
                 "--iw_train is now 2 (the checkpoint's run used 1)",
                 "--kl_warmup is now 1 (the checkpoint's run used 0)"):
        assert line in done.stdout, done.stdout
    planned = edited(small_run / "checkpoint.pt", lambda c: c["args"].update(lr_schedule="cosine", num_epochs=5),
                     tmp_path / "X" / "checkpoint.pt")
    done = run("--num_epochs", "1", *FAST, "--PRR", "False", "--resume", planned)
    assert done.status == 0 and "cosine schedule" not in done.stdout, done.stdout  # nothing left to train
    mean_bias = edited(small_run / "checkpoint.pt", lambda c: c["args"].update(output_bias="mean"),
                       tmp_path / "X" / "checkpoint.pt")
    err = usage_error(capsys, ["--resume", str(mean_bias), "--output_bias", "zero"])
    assert "--output_bias zero differs from the checkpoint's mean; leave it out or give mean (it would change the " \
           "model's start)" in err


def test_a_second_signal_after_the_message_adds_no_line(capsys):
    with signals.SIGNALS.caught():
        with pytest.raises(SystemExit) as first:
            report.fail("interrupted in epoch 3; the checkpoint ...", 130)
        with pytest.raises(SystemExit) as second:
            report.fail("interrupted", 130)
    assert first.value.code == second.value.code == 130
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("device", DEVICES)
def test_on_a_device_a_run_repeats_and_a_stopped_run_resumes_exactly(mnist_dir, tmp_path, monkeypatch, device):
    """The same seed on the same device gives the same run; stopped after epoch 1 and resumed, the same run
    again, to the bit: with binarized data, noise, IWAE training and DReG, PRS and the likelihood bound."""
    options = ["--binarize", "True", "--add_noise", "True", "--iw_train", "2", "--iw_gradient", "dreg", "--PRS", "True",
               "--iw_samples", "10", "--device", device, *FAST, "--num_epochs", "3"]
    first, second = (run(*options, "--results_path", tmp_path / name) for name in ("first", "second"))
    assert first.status == second.status == 0, (first.stderr, second.stderr)
    assert without_seconds(metrics(tmp_path / "first")) == without_seconds(metrics(tmp_path / "second"))
    real_save = run_main.save_epoch

    def save_then_interrupt(s, run_, *rest):
        real_save(s, run_, *rest)
        if run_.epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(run_main, "save_epoch", save_then_interrupt)
    stopped = run(*options, "--results_path", tmp_path / "stopped")
    one_line_error(stopped, 130, "interrupted in epoch 1")
    monkeypatch.setattr(run_main, "save_epoch", real_save)
    resumed = run("--num_epochs", "3", "--iw_samples", "10", "--PRS", "True", "--device", device, *FAST,
                  "--resume", tmp_path / "stopped" / "checkpoint.pt")
    assert resumed.status == 0, resumed.stderr
    assert without_seconds(metrics(tmp_path / "stopped")) == without_seconds(metrics(tmp_path / "first"))
    a, b = weights(tmp_path / "first"), weights(tmp_path / "stopped")
    assert all(torch.equal(a[k], b[k]) for k in a)
    evaluations = [json.loads((tmp_path / n / "evaluation.json").read_text()) for n in ("first", "stopped")]
    assert evaluations[0] == evaluations[1]
