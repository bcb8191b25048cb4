"""End to end: the CLI in a subprocess on synthetic MNIST; files, resume, interruption, reproducibility."""
import csv
import fcntl
import json
import os
import pty
import re
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

import run_main
from conftest import FAST, ROOT, run_cli

EPOCH_LINE = re.compile(r"^epoch (\d+): L_tot \d+\.\d\d L_likelihood \d+\.\d\d L_divergence \d+\.\d\d"
                        r" \| test L_tot \d+\.\d\d L_likelihood \d+\.\d\d L_divergence \d+\.\d\d \| [\d.]+ s$")
DENOISING_2D = ["--dim_z", "2", "--PMLR", "True", "--add_noise", "True"]


def metrics(results):
    with open(os.path.join(results, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def without_seconds(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def epochs_printed(stdout):
    return [int(m.group(1)) for m in map(EPOCH_LINE.match, stdout.splitlines()) if m]


@pytest.fixture(scope="module")
def first_run(mnist_dir, tmp_path_factory):
    """Two epochs of the denoising 2-D model with PMLR, into a results folder that already holds a user file."""
    results = tmp_path_factory.mktemp("first") / "results"
    results.mkdir()
    (results / "keep.txt").write_text("mine")
    done = run_cli(*DENOISING_2D, "--num_epochs", "2", *FAST, "--data_dir", mnist_dir, "--results_path", results)
    assert done.returncode == 0, done.stderr
    return str(results), done


def test_end_to_end_writes_every_file(first_run):
    results, done = first_run
    assert epochs_printed(done.stdout) == [0, 1], done.stdout
    assert done.stderr == ""  # no progress bar, warning or traceback when stderr is not a terminal
    sizes = {"input.jpg": (280, 280), "input_noise.jpg": (280, 280), "PRR_epoch_00.jpg": (280, 280),
             "PRR_epoch_01.jpg": (280, 280), "PMLR_epoch_00.jpg": (560, 560), "PMLR_epoch_01.jpg": (560, 560),
             "PMLR_map_epoch_01.jpg": (800, 600)}
    for name, size in sizes.items():
        with Image.open(os.path.join(results, name)) as img:
            assert img.size == size, name
    assert os.path.getsize(os.path.join(results, "loss.png")) > 0
    with open(os.path.join(results, "keep.txt")) as f:
        assert f.read() == "mine"
    rows = metrics(results)
    assert list(rows[0]) == list(run_main.METRICS)
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert float(rows[1]["test_loss"]) == pytest.approx(
        float(rows[1]["test_likelihood"]) + float(rows[1]["test_divergence"]), abs=1e-3)
    checkpoint = torch.load(os.path.join(results, "checkpoint.pt"), weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["model_args"] == {"dim_z": 2, "n_hidden": 64}
    assert not any(name.endswith(".tmp") for name in os.listdir(results))
    noise = re.search(r"^denoising: mean absolute error to the clean test images: noisy ([\d.]+), restored ([\d.]+)$",
                      done.stdout, re.M)
    assert noise, done.stdout
    evaluation = json.loads(open(os.path.join(results, "evaluation.json")).read())
    assert evaluation["mae_noisy"] == pytest.approx(float(noise.group(1)), abs=1e-4)
    assert evaluation["mae_restored"] == pytest.approx(float(noise.group(2)), abs=1e-4)


def test_noisy_input_differs_from_clean_input(first_run):
    results, _ = first_run
    clean = np.asarray(Image.open(os.path.join(results, "input.jpg")), dtype=float)
    noisy = np.asarray(Image.open(os.path.join(results, "input_noise.jpg")), dtype=float)
    assert np.abs(clean - noisy).mean() > 50


def test_same_seed_same_metrics_and_other_seed_differs(first_run, mnist_dir, tmp_path):
    results, _ = first_run
    again = run_cli(*DENOISING_2D, "--num_epochs", "2", *FAST, "--data_dir", mnist_dir,
                    "--results_path", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    assert without_seconds(metrics(tmp_path / "again")) == without_seconds(metrics(results))
    other = run_cli(*DENOISING_2D, "--num_epochs", "1", *FAST, "--data_dir", mnist_dir, "--seed", "2",
                    "--results_path", tmp_path / "other")
    assert other.returncode == 0, other.stderr
    assert without_seconds(metrics(tmp_path / "other"))[0] != without_seconds(metrics(results))[0]


def test_resume_continues_as_if_never_stopped(first_run, mnist_dir, tmp_path):
    results, _ = first_run
    straight = run_cli(*DENOISING_2D, "--num_epochs", "3", *FAST, "--data_dir", mnist_dir,
                       "--results_path", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    # dim_z and n_hidden come from the checkpoint; --num_epochs is the total
    resumed = run_cli("--PMLR", "True", "--add_noise", "True", "--num_epochs", "3", "--batch_size", "64",
                      "--PMLR_n_samples", "100", "--data_dir", mnist_dir, "--results_path", tmp_path / "resumed",
                      "--resume", os.path.join(results, "checkpoint.pt"))
    assert resumed.returncode == 0, resumed.stderr
    assert epochs_printed(resumed.stdout) == [2]
    assert "resumed from" in resumed.stdout
    assert without_seconds(metrics(tmp_path / "resumed")) == without_seconds(metrics(tmp_path / "straight"))
    assert os.path.exists(tmp_path / "resumed" / "PRR_epoch_02.jpg")
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["epoch"] == 3


def test_resume_with_finished_epochs_only_plots_and_evaluates(first_run, mnist_dir, tmp_path):
    results, _ = first_run
    done = run_cli("--PMLR", "True", "--add_noise", "True", "--num_epochs", "2", "--batch_size", "64",
                   "--PMLR_n_samples", "100", "--iw_samples", "5", "--data_dir", mnist_dir,
                   "--results_path", tmp_path, "--resume", os.path.join(results, "checkpoint.pt"))
    assert done.returncode == 0, done.stderr
    assert epochs_printed(done.stdout) == []
    assert re.search(r"^test log p\(x\) >= -\d+\.\d\d nats \(K=5\)$", done.stdout, re.M), done.stdout
    assert os.path.exists(tmp_path / "PRR_epoch_01.jpg") and os.path.exists(tmp_path / "PMLR_map_epoch_01.jpg")
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["K"] == 5 and evaluation["test_log_likelihood"] < 0


def test_bad_checkpoints_are_one_line_usage_errors(first_run, tmp_path, capsys):
    results, _ = first_run
    good = os.path.join(results, "checkpoint.pt")
    truncated, garbage, foreign, pickled = (tmp_path / n for n in ("truncated.pt", "garbage.pt", "foreign.pt",
                                                                   "pickled.pt"))
    with open(good, "rb") as f:
        truncated.write_bytes(f.read()[:5000])
    garbage.write_bytes(os.urandom(3000))
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    torch.save(torch.nn.Linear(2, 2), pickled)
    cases = [(["--resume", str(truncated)], "corrupt"), (["--resume", str(garbage)], "corrupt"),
             (["--resume", str(foreign)], "not a checkpoint"), (["--resume", str(pickled)], "corrupt"),
             (["--resume", good, "--dim_z", "3"], "--dim_z 3 differs"),
             (["--resume", good, "--n_hidden", "500"], "--n_hidden 500 differs"),
             (["--resume", good, "--num_epochs", "1"], "fewer than the 2 epochs")]
    for argv, needle in cases:
        with pytest.raises(SystemExit) as exit_info:
            run_main.parse_args(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and needle in err and err.count("\n") == 1, (argv, err)
    args, checkpoint = run_main.parse_args(["--resume", good, "--dim_z", "2"])
    assert (args.dim_z, args.n_hidden, checkpoint["epoch"]) == (2, 64, 2)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(first_run, mnist_dir, tmp_path):
    results, _ = first_run
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    before = (copy / "checkpoint.pt").read_bytes()
    done = run_cli("--learn_rate", "1e38", "--num_epochs", "4", "--batch_size", "64", "--data_dir", mnist_dir,
                   "--results_path", copy, "--resume", copy / "checkpoint.pt")
    assert done.returncode == 1
    assert "non-finite loss in epoch 2" in done.stderr and str(copy / "checkpoint.pt") in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert (copy / "checkpoint.pt").read_bytes() == before


def test_sigint_stops_between_batches_and_keeps_the_checkpoint(mnist_dir, tmp_path):
    results = tmp_path / "results"
    child = subprocess.Popen([sys.executable, os.path.join(ROOT, "run_main.py"), "--dim_z", "2", "--num_epochs",
                              "1000", "--PRR", "False", *FAST, "--data_dir", mnist_dir, "--results_path", results],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (results / "checkpoint.pt").exists():
            time.sleep(0.2)
        time.sleep(1.0)
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.count("\n") == 1
    finished = epochs_printed(stdout)
    assert finished and finished == list(range(len(finished)))
    assert f"interrupted in epoch {len(finished)}" in stderr
    assert f"--resume {results / 'checkpoint.pt'}" in stderr
    checkpoint = torch.load(results / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == len(finished) == len(metrics(results))


def test_progress_bar_only_on_a_terminal(mnist_dir, tmp_path):
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0x0: no room for a bar
    child = subprocess.Popen([sys.executable, os.path.join(ROOT, "run_main.py"), "--dim_z", "2", "--num_epochs", "1",
                              "--PRR", "False", *FAST, "--data_dir", mnist_dir, "--results_path", tmp_path],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=terminal, text=True)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    child.wait(timeout=120)
    os.close(controller)
    assert child.returncode == 0
    assert re.search(rb"epoch 0: +\d+%\|.*\| \d/4 \[", shown), shown  # tqdm's bar over the 4 batches
