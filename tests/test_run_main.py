"""run_main.py: flags and usage errors, then whole runs on synthetic MNIST (in this process, except where a
real process matters: signals, the terminal's progress bar, the exit status of a usage error)."""
import contextlib
import csv
import errno
import fcntl
import io
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
from collections import namedtuple

import numpy as np
import pytest
import torch
from PIL import Image

import run_main
import vae
from conftest import FAST, ROOT, run_cli

SEED_DEFAULTS = dict(dim_z=20, results_path="results", add_noise=False, n_hidden=500, learn_rate=1e-3,
                     num_epochs=20, batch_size=128, PRR=True, PRR_n_img_x=10, PRR_n_img_y=10,
                     PRR_resize_factor=1.0, PMLR=False, PMLR_n_img_x=20, PMLR_n_img_y=20,
                     PMLR_resize_factor=1.0, PMLR_z_range=2.0, PMLR_n_samples=5000,
                     data_dir="data", seed=1, device="auto", iw_samples=0, resume=None, PMLR_grid="linear")
NEW_DEFAULTS = dict(PRS=False, PRS_n_img_x=10, PRS_n_img_y=10, PRS_resize_factor=1.0, binarize=False,
                    keep_prob=0.9, precision="fp32", lr_schedule="constant", lr_min=1e-5, kl_warmup=0,
                    iw_train=1, output_bias="zero")

PMLR_ON = ["--PMLR", "True", "--dim_z", "2"]
BAD = [
    (["--dim_z", "0"], "--dim_z"),
    (["--dim_z", "-3"], "--dim_z"),
    (["--dim_z", "two"], "--dim_z"),
    (["--n_hidden", "0"], "--n_hidden"),
    (["--n_hidden", "10000000"], "needs about"),
    (["--learn_rate", "0"], "--learn_rate"),
    (["--learn_rate", "-0.1"], "--learn_rate"),
    (["--learn_rate", "nan"], "--learn_rate"),
    (["--num_epochs", "0"], "--num_epochs"),
    (["--batch_size", "0"], "--batch_size"),
    (["--seed", "99999999999999999999999"], "--seed"),
    (["--seed", str(-2**63 - 1)], "--seed"),
    (["--keep_prob", "0"], "--keep_prob"),
    (["--keep_prob", "1.5"], "--keep_prob"),
    (["--keep_prob", "nan"], "--keep_prob"),
    (["--binarize", "maybe"], "--binarize"),
    (["--precision", "fp16"], "--precision"),
    (["--PRR_n_img_x", "0"], "--PRR_n_img_x"),
    (["--PRR_n_img_y", "-1"], "--PRR_n_img_y"),
    (["--PRR_resize_factor", "0"], "--PRR_resize_factor"),
    (["--PRR_resize_factor", "-2"], "--PRR_resize_factor"),
    (["--PRR_resize_factor", "0.01"], "--PRR_resize_factor"),
    (["--PRR_n_img_x", "101", "--PRR_n_img_y", "100"], "PRR grid"),
    (["--PRR_n_img_x", "100", "--PRR_resize_factor", "30"], "JPEG"),
    (["--PRS", "True", "--PRS_n_img_x", "0"], "--PRS_n_img_x"),
    (["--PRS", "True", "--PRS_resize_factor", "inf"], "--PRS_resize_factor"),
    (["--PRS", "True", "--PRS_n_img_y", "3000"], "JPEG"),
    (["--PRS", "yes please"], "--PRS"),
    (PMLR_ON + ["--PMLR_n_img_x", "0"], "--PMLR_n_img_x"),
    (PMLR_ON + ["--PMLR_n_img_y", "0"], "--PMLR_n_img_y"),
    (PMLR_ON + ["--PMLR_resize_factor", "0"], "--PMLR_resize_factor"),
    (PMLR_ON + ["--PMLR_z_range", "0"], "--PMLR_z_range"),
    (PMLR_ON + ["--PMLR_z_range", "-1"], "--PMLR_z_range"),
    (PMLR_ON + ["--PMLR_z_range", "1e39"], "--PMLR_z_range"),
    (PMLR_ON + ["--PMLR_n_samples", "0"], "--PMLR_n_samples"),
    (PMLR_ON + ["--PMLR_n_samples", "10001"], "--PMLR_n_samples"),
    (PMLR_ON + ["--PMLR_grid", "polar"], "--PMLR_grid"),
    (["--PMLR", "True"], "--dim_z 2"),
    (["--PMLR", "True", "--dim_z", "3"], "--dim_z 2"),
    (["--add_noise", "maybe"], "--add_noise"),
    (["--PRR", "2"], "--PRR"),
    (["--PMLR", "Truee"], "--PMLR"),
    (["--iw_samples", "-1"], "--iw_samples"),
    (["--device", "tpu"], "--device"),
    (["--resume", "no/such/checkpoint.pt"], "no such file"),
]
EPOCH_LINE = re.compile(r"^epoch (\d+): L_tot \d+\.\d\d L_likelihood \d+\.\d\d L_divergence \d+\.\d\d"
                        r" \| test L_tot \d+\.\d\d L_likelihood \d+\.\d\d L_divergence \d+\.\d\d \| [\d.]+ s$")
DENOISING_2D = ["--dim_z", "2", "--PMLR", "True", "--add_noise", "True"]
Done = namedtuple("Done", "status stdout stderr")


def usage_error(capsys, argv):
    """Parse argv expecting a usage error; return its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        run_main.parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def run(*args):
    """run_main.main(args) in this process: its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_main.main([str(a) for a in args])
            status = 0
        except SystemExit as e:
            status = e.code
    return Done(status, out.getvalue(), err.getvalue())


def one_line_error(done, status, needle):
    assert done.status == status, done
    assert done.stderr.startswith("run_main.py: error:") and done.stderr.count("\n") == 1, done.stderr
    assert needle in done.stderr, done.stderr


def metrics(results):
    with open(os.path.join(results, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def without_seconds(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def epochs_printed(stdout):
    return [int(m.group(1)) for m in map(EPOCH_LINE.match, stdout.splitlines()) if m]


def saved_epoch(results):
    return torch.load(os.path.join(results, "checkpoint.pt"), weights_only=True)["epoch"]


# flags and usage errors

def test_defaults_are_the_seeds_plus_the_new_flags():
    args, checkpoint = run_main.parse_args([])
    assert checkpoint is None
    assert vars(args) == {**SEED_DEFAULTS, **NEW_DEFAULTS}


@pytest.mark.parametrize("argv,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_are_one_line_usage_errors(capsys, argv, needle):
    err = usage_error(capsys, argv)
    assert needle in err
    assert err.startswith("run_main.py: error:")
    assert err.count("\n") == 1, err


def test_a_picture_larger_than_memory_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setattr(run_main, "available_memory", lambda device: 8e9)
    err = usage_error(capsys, ["--PRR_n_img_x", "100", "--PRR_n_img_y", "100", "--PRR_resize_factor", "23"])
    assert "the PRR picture (64400x64400 pixels) needs about 16.6 GB of memory; 8 GB is available" in err
    run_main.parse_args(["--PRR_n_img_x", "10", "--PRR_resize_factor", "23"])  # 6440x644 fits


def test_results_path_that_is_a_file(capsys, tmp_path):
    existing = tmp_path / "results"
    existing.write_text("mine")
    err = usage_error(capsys, ["--results_path", str(existing)])
    assert "existing file" in err
    assert existing.read_text() == "mine"


@pytest.mark.parametrize("text,value", [("True", True), ("true", True), ("yes", True), ("1", True),
                                        ("False", False), ("false", False), ("no", False), ("0", False)])
@pytest.mark.parametrize("flag", ["add_noise", "PRR", "PMLR", "PRS", "binarize"])
def test_boolean_spellings(flag, text, value):
    args, _ = run_main.parse_args([f"--{flag}", text, "--dim_z", "2"])
    assert getattr(args, flag) is value


def test_usage_error_from_the_command_line_has_no_traceback():
    result = run_cli("--add_noise", "perhaps", timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "--add_noise" in result.stderr


def test_resume_command_names_the_script_as_run():
    command = run_main.resume_command("/opt/vae/run_main.py", ["--dim_z", "2", "--resume=old.pt", "--num_epochs", "9"],
                                      "res/checkpoint.pt")
    assert command == "python /opt/vae/run_main.py --dim_z 2 --num_epochs 9 --resume res/checkpoint.pt"


# whole runs

@pytest.fixture(scope="module")
def first_run(mnist_dir, tmp_path_factory):
    """Two epochs of the denoising 2-D model with PMLR and PRS, into a folder that already holds a user file."""
    results = tmp_path_factory.mktemp("first") / "results"
    results.mkdir()
    (results / "keep.txt").write_text("mine")
    done = run(*DENOISING_2D, "--PRS", "True", "--num_epochs", "2", *FAST, "--data_dir", mnist_dir,
               "--results_path", results)
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
    assert list(rows[0]) == list(run_main.METRICS)
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert float(rows[1]["test_loss"]) == pytest.approx(
        float(rows[1]["test_likelihood"]) + float(rows[1]["test_divergence"]), abs=1e-3)
    checkpoint = torch.load(os.path.join(results, "checkpoint.pt"), weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["model_args"] == {"dim_z": 2, "n_hidden": 64, "keep_prob": 0.9}
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
    again = run(*DENOISING_2D, "--num_epochs", "2", *FAST, "--data_dir", mnist_dir, "--results_path", tmp_path / "again")
    assert again.status == 0, again.stderr
    assert without_seconds(metrics(tmp_path / "again")) == without_seconds(metrics(results))  # --PRS True or not
    assert not any(name.startswith("PRS_") for name in os.listdir(tmp_path / "again"))
    model = vae.load(os.path.join(results, "checkpoint.pt"))
    z = torch.randn(100, 2, generator=torch.Generator().manual_seed(1))
    expected = np.asarray(Image.open(os.path.join(results, "PRS_epoch_01.jpg")), dtype=float)
    drawn = np.asarray(Image.open(io.BytesIO(grid_jpeg(model.decode(z)))), dtype=float)
    assert np.abs(expected - drawn).max() < 3  # the decoded z of generator seed --seed, JPEG aside


def grid_jpeg(images):
    import plot_utils
    buffer = io.BytesIO()
    plot_utils.save_grid(buffer, images, 10, 10)
    return buffer.getvalue()


def test_same_seed_same_metrics_and_other_seed_differs(first_run, mnist_dir, tmp_path):
    results, _ = first_run
    other = run(*DENOISING_2D, "--num_epochs", "1", *FAST, "--data_dir", mnist_dir, "--seed", "2",
                "--results_path", tmp_path / "other")
    assert other.status == 0, other.stderr
    assert without_seconds(metrics(tmp_path / "other"))[0] != without_seconds(metrics(results))[0]


def test_resume_continues_as_if_never_stopped(first_run, mnist_dir, tmp_path):
    results, _ = first_run
    straight = run(*DENOISING_2D, "--num_epochs", "3", *FAST, "--data_dir", mnist_dir,
                   "--results_path", tmp_path / "straight")
    assert straight.status == 0, straight.stderr
    # dim_z, n_hidden and add_noise come from the checkpoint; --num_epochs is the total
    resumed = run("--PMLR", "True", "--num_epochs", "3", "--batch_size", "64", "--PMLR_n_samples", "100",
                  "--data_dir", mnist_dir, "--results_path", tmp_path / "resumed",
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
    args, _ = run_main.parse_args(["--resume", good, "--add_noise", "True", "--num_epochs", "3"])
    assert (args.add_noise, args.binarize, args.keep_prob, args.dim_z) == (True, False, 0.9, 2)
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # where a default ./results would appear
    done = run("--learn_rate", "5e-4", "--batch_size", "32", "--precision", "bf16", "--num_epochs", "3",
               "--PMLR_n_samples", "100", "--data_dir", mnist_dir, "--resume", copy / "checkpoint.pt")
    assert done.status == 0, done.stderr
    assert "--learn_rate is now 0.0005 (the checkpoint's run used 0.001)" in done.stdout
    assert "--batch_size is now 32 (the checkpoint's run used 64)" in done.stdout
    assert "--precision is now bf16 (the checkpoint's run used fp32)" in done.stdout
    assert saved_epoch(copy) == 3  # no --results_path: the checkpoint's own folder
    assert os.listdir(tmp_path / "cwd") == []  # and no ./results


def test_resume_with_finished_epochs_only_plots_and_evaluates(first_run, mnist_dir, tmp_path):
    results, _ = first_run
    done = run("--PMLR", "True", "--num_epochs", "2", "--batch_size", "64", "--PMLR_n_samples", "100",
               "--iw_samples", "5", "--data_dir", mnist_dir, "--results_path", tmp_path,
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
    torch.save({"format": vae.CHECKPOINT_FORMAT}, paths["format_only"])
    cases = [(["--resume", str(paths["truncated"])], "corrupt"), (["--resume", str(paths["garbage"])], "corrupt"),
             (["--resume", str(paths["foreign"])], "not a checkpoint"), (["--resume", str(paths["pickled"])], "corrupt"),
             (["--resume", str(paths["format_only"])], "incomplete checkpoint"),
             (["--resume", good, "--dim_z", "3"], "--dim_z 3 differs"),
             (["--resume", good, "--num_epochs", "1"], "fewer than the 2 epochs")]
    for argv, needle in cases:
        err = usage_error(capsys, argv)
        assert needle in err and err.count("\n") == 1, (argv, err)
    args, checkpoint = run_main.parse_args(["--resume", good, "--dim_z", "2"])
    assert (args.dim_z, args.n_hidden, checkpoint["epoch"], args.results_path) == (2, 64, 2, results)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(first_run, mnist_dir, tmp_path):
    results, _ = first_run
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    before = (copy / "checkpoint.pt").read_bytes()
    done = run("--learn_rate", "1e38", "--num_epochs", "4", "--batch_size", "64", "--data_dir", mnist_dir,
               "--resume", copy / "checkpoint.pt")
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
    earlier = run_main.ResultsFolder(str(folder)).outputs()
    assert "checkpoint.pt" in earlier and "PRS_epoch_01.jpg" in earlier and "keep.txt" not in earlier
    for n in (1, 2):
        done = run("--dim_z", "3", "--num_epochs", "1", *FAST, "--data_dir", mnist_dir, "--results_path", folder)
        assert done.status == 0, done.stderr
        assert f"moved the earlier run's {len(earlier) if n == 1 else 5} files in {folder} to " \
               f"{folder / f'previous_run_{n}'}" in done.stdout
    assert sorted(os.listdir(folder / "previous_run_1")) == earlier
    assert (folder / "previous_run_1" / "checkpoint.pt").read_bytes() == open(os.path.join(results, "checkpoint.pt"), "rb").read()
    assert sorted(os.listdir(folder / "previous_run_2")) == ["PRR_epoch_00.jpg", "checkpoint.pt", "input.jpg",
                                                              "loss.png", "metrics.csv"]
    assert [r["epoch"] for r in metrics(folder)] == ["0"] and saved_epoch(folder) == 1
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "keep.txt").read_text() == "mine"
    assert (folder / "PRR_epoch_01.jpg.bak").read_text() == "mine too"


def test_a_locked_folder_stops_a_second_run(mnist_dir, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    with open(folder / run_main.LOCK_NAME, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running run_main.py holds it
        done = run("--num_epochs", "1", *FAST, "--data_dir", mnist_dir, "--results_path", folder)
    one_line_error(done, 1, f"another run is writing to {folder}")
    assert sorted(os.listdir(folder)) == [run_main.LOCK_NAME]
    done = run("--num_epochs", "1", "--PRR", "False", *FAST, "--data_dir", mnist_dir, "--results_path", folder)
    assert done.status == 0, done.stderr  # released with the file: a dead run leaves no lock behind


def test_stale_temporary_files_are_removed_and_others_kept(mnist_dir, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    for name in ("checkpoint.pt.tmp", "metrics.csv.tmp", "PRR_epoch_03.jpg.tmp", "notes.tmp"):
        (folder / name).write_text("stale")
    done = run("--num_epochs", "1", "--PRR", "False", *FAST, "--data_dir", mnist_dir, "--results_path", folder)
    assert done.status == 0, done.stderr
    assert [n for n in os.listdir(folder) if n.endswith(".tmp")] == ["notes.tmp"]


def failing_open(monkeypatch, fails, error):
    """Make run_main's open raise error (after writing a little) for the files fails(path) picks."""
    def fake_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if "w" in mode and fails(str(path)):
            f.write(b"partial")
            f.close()
            raise error
        return f
    monkeypatch.setattr(run_main, "open", fake_open, raising=False)


def test_a_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(mnist_dir, tmp_path, monkeypatch):
    folder = tmp_path / "results"
    writes = []
    failing_open(monkeypatch, lambda p: p.endswith("checkpoint.pt.tmp") and writes.append(p) or len(writes) > 1,
                 OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    done = run("--num_epochs", "3", *FAST, "--data_dir", mnist_dir, "--results_path", folder)
    one_line_error(done, 1, f"cannot write {folder / 'checkpoint.pt'}: no space left on device")
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]
    assert saved_epoch(folder) == 1  # epoch 1's checkpoint failed; epoch 0's stays


def test_a_read_only_folder_is_one_line(mnist_dir, tmp_path, monkeypatch):
    folder = tmp_path / "results"
    failing_open(monkeypatch, lambda p: True, OSError(errno.EROFS, os.strerror(errno.EROFS)))
    done = run("--num_epochs", "1", *FAST, "--data_dir", mnist_dir, "--results_path", folder)
    one_line_error(done, 1, f"cannot write {folder / 'input.jpg'}: read-only file system")
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]


# binarized MNIST, dropout, precision

def test_binarized_run_saves_its_flags_and_resume_keeps_them(mnist_dir, tmp_path, capsys):
    folder = tmp_path / "binary"
    done = run("--binarize", "True", "--keep_prob", "1.0", "--num_epochs", "1", "--iw_samples", "3", *FAST,
               "--data_dir", mnist_dir, "--results_path", folder)
    assert done.status == 0, done.stderr
    checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert checkpoint["args"]["binarize"] is True and checkpoint["model_args"]["keep_prob"] == 1.0
    with Image.open(folder / "input.jpg") as img:  # the pictures' inputs are the binary test images
        assert set(np.unique(np.asarray(img))) <= set(range(0, 40)) | set(range(215, 256))
    err = usage_error(capsys, ["--resume", str(folder / "checkpoint.pt"), "--binarize", "False"])
    assert "--binarize False differs from the checkpoint's True" in err
    args, _ = run_main.parse_args(["--resume", str(folder / "checkpoint.pt"), "--num_epochs", "2"])
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
    monkeypatch.setattr(vae, "train_epoch", spying("train", vae.train_epoch))
    monkeypatch.setattr(vae, "evaluate", spying("evaluate", vae.evaluate))
    monkeypatch.setattr(vae, "iw_log_likelihood", spying("iw", vae.iw_log_likelihood))
    folder = tmp_path / "bf16"
    done = run("--precision", "bf16", "--num_epochs", "2", "--PRR", "False", "--iw_samples", "3", *FAST,
               "--data_dir", mnist_dir, "--results_path", folder)
    assert done.status == 0, done.stderr
    assert products == {"train": {torch.bfloat16}, "evaluate": {torch.float32}, "iw": {torch.float32}}
    checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert checkpoint["args"]["precision"] == "bf16"
    assert all(t.dtype == torch.float32 for t in checkpoint["model"].values())  # fp32 master weights


# real processes: signals and the terminal

@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_stop_between_batches_and_keep_the_checkpoint(mnist_dir, tmp_path, signum, status):
    results = tmp_path / "results"
    script = os.path.join(ROOT, "run_main.py")
    child = subprocess.Popen([sys.executable, script, "--dim_z", "2", "--num_epochs", "1000", "--PRR", "False",
                              *FAST, "--data_dir", mnist_dir, "--results_path", results],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (results / "checkpoint.pt").exists():
            time.sleep(0.1)
        time.sleep(0.5)
        child.send_signal(signum)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == status, stderr
    assert stderr.count("\n") == 1, stderr
    finished = epochs_printed(stdout)
    assert finished and finished == list(range(len(finished)))
    assert f"interrupted in epoch {len(finished)}" in stderr
    assert f"continue with: python {script} " in stderr and f"--resume {results / 'checkpoint.pt'}" in stderr
    assert saved_epoch(results) == len(finished) == len(metrics(results))


def test_progress_bars_only_on_a_terminal(mnist_dir, tmp_path):
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0x0: no room for a bar
    child = subprocess.Popen([sys.executable, os.path.join(ROOT, "run_main.py"), "--dim_z", "2", "--num_epochs", "1",
                              "--PRR", "False", "--iw_samples", "2000", *FAST, "--data_dir", mnist_dir,
                              "--results_path", tmp_path],
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
    assert re.search(rb"test log p\(x\), K=2000: +\d+%\|.*\| \d+/200 \[", shown), shown  # and over the test images
