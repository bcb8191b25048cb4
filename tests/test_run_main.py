"""run_main.py: flags and usage errors, then whole runs on synthetic MNIST (in this process, except where a
real process matters: signals, the terminal's progress bar, the exit status of a usage error)."""
import ast
import contextlib
import fcntl
import glob
import graphlib
import io
import json
import os
import pty
import re
import shutil
import signal
import struct
import sys
import termios

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoint
import cli
import run_main
import training
import vae
from checkpoint import FORMAT, METRICS
from config import VAEConfig
from conftest import (
    CVAE_2D,
    DENOISING_2D,
    DEVICES,
    FAST,
    ROOT,
    checkpoint_file,
    edited,
    epochs_printed,
    metrics,
    one_element_moments,
    one_line_error,
    run,
    saved_epoch,
    usage_error,
    without_seconds,
)

# whole runs


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


# what a run refuses, and what it survives


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


def test_a_conditional_run_resumes_exactly_and_keeps_its_kind(cvae_run, mnist_dir, tmp_path, capsys):
    results, _ = cvae_run
    straight = run(*CVAE_2D, "--num_epochs", "3", "--iw_train", "2", "--results_path", tmp_path / "straight")
    assert straight.status == 0, straight.stderr
    first = run(*CVAE_2D, "--num_epochs", "2", "--iw_train", "2", "--results_path", tmp_path / "resumed")
    assert first.status == 0, first.stderr
    # --conditional comes from the checkpoint
    resumed = run("--num_epochs", "3", *FAST, "--resume", tmp_path / "resumed" / "checkpoint.pt")
    assert resumed.status == 0, resumed.stderr
    assert resumed.stdout.count("epoch 2: -L_2 ") == 1 and "is now" not in resumed.stdout
    assert without_seconds(metrics(tmp_path / "resumed")) == without_seconds(metrics(tmp_path / "straight"))
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    err = usage_error(capsys, ["--resume", os.path.join(results, "checkpoint.pt"), "--conditional", "False"])
    assert "--conditional False differs from the checkpoint's True" in err


def test_a_plain_checkpoint_stays_plain_and_refuses_the_analogies(mnist_dir, tmp_path, capsys):
    checkpoint_file(str(tmp_path), vae.VAE(VAEConfig(2, 16)))
    path = str(tmp_path / "checkpoint.pt")
    assert cli.parse_args(["--resume", path]).settings.conditional is False
    assert "--PARR True needs --conditional True" in usage_error(capsys, ["--resume", path, "--PARR", "True"])
    assert "differs from the checkpoint's False" in usage_error(capsys, ["--resume", path, "--conditional", "True"])
    assert vae.load(path).conditional is False
    raw = torch.load(path, weights_only=True)
    del raw["model_args"]["conditional"]  # as a checkpoint saved before the flag existed
    torch.save(raw, path)
    assert cli.parse_args(["--resume", path]).settings.conditional is False and vae.load(path).conditional is False


def test_a_conditional_denoising_run_restores_with_the_labels(mnist_dir, tmp_path):
    done = run(*CVAE_2D, "--add_noise", "True", "--num_epochs", "1", "--results_path", tmp_path)
    assert done.status == 0, done.stderr
    assert "denoising: mean absolute error" in done.stdout


def imports_of(path):
    """The project's modules a module imports, at its top or inside its functions."""
    tree = ast.parse(open(path).read())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return names


def test_the_modules_import_one_another_without_a_circle():
    modules = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))}
    graph = {m: imports_of(os.path.join(ROOT, f"{m}.py")) & modules - {m} for m in modules}
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a circle
    assert order.index("config") < order.index("checkpoint") < order.index("vae") < order.index("training")
    assert "cli" not in graph["checkpoint"] and "vae" not in graph["checkpoint"]
    assert not {"cli", "flags", "run_main"} & (graph["vae"] | graph["mnist_data"] | graph["plot_utils"])
    for m in modules:  # no module over 420 lines
        assert sum(1 for _ in open(os.path.join(ROOT, f"{m}.py"))) <= 420, m


def test_settings_json_records_the_run_and_a_resume_keeps_it_true(tmp_path):
    folder = tmp_path / "R"
    assert run("--num_epochs", "1", "--PRR", "False", *FAST, "--results_path", folder).status == 0
    record = json.loads((folder / "settings.json").read_text())
    assert record["flags"]["num_epochs"] == 1 and record["epochs_finished"] == 1
    assert record["model"] == {"dim_z": 20, "n_hidden": 64, "keep_prob": 0.9, "conditional": False}
    assert record["torch"] == torch.__version__ and record["device"] == "cpu"
    assert record["flags"] == checkpoint.read(str(folder / "checkpoint.pt")).args
    done = run("--num_epochs", "2", "--learn_rate", "3e-4", "--PRR", "False", "--resume", folder / "checkpoint.pt")
    assert done.status == 0, done.stderr
    record = json.loads((folder / "settings.json").read_text())
    assert (record["flags"]["num_epochs"], record["flags"]["learn_rate"], record["epochs_finished"]) == (2, 3e-4, 2)
    assert record["flags"]["resume"] == str(folder / "checkpoint.pt")
