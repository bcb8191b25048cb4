"""signals.py: Ctrl-C, kill and a closed terminal in every phase, the messages that say what is kept, and the command
that continues."""
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

import plot_utils
import report
import run_main
import signals
import vae
from conftest import FAST, ROOT, epochs_printed, metrics, one_line_error, run, saved_epoch, with_data


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


MOMENTS = (0.4, 0.6, 0.9, 1.3, 1.8, 2.5)  # seconds: importing torch, reading the data, training


def test_ctrl_c_at_any_moment_of_the_start_is_one_line_never_a_traceback(tmp_path):
    children = []
    for i, moment in enumerate(MOMENTS):
        children.append((moment, subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "run_main.py"),
             *with_data(["--num_epochs", "100", "--PRR", "False", *FAST, "--results_path", tmp_path / str(i)])],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    started = time.monotonic()
    for moment, child in children:
        time.sleep(max(0.0, started + moment - time.monotonic()))
        child.send_signal(signal.SIGINT)
    for moment, child in children:
        _, stderr = child.communicate(timeout=120)
        assert child.returncode == 130, (moment, stderr)
        assert stderr.startswith("run_main.py: error: interrupted") and stderr.count("\n") == 1, (moment, stderr)
    assert not (tmp_path / "0" / "checkpoint.pt").exists()


def test_a_signal_while_a_resume_only_draws_is_heard(small_run, mnist_dir, tmp_path, monkeypatch):
    real_save = plot_utils.Canvas.save

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real_save(*args, **kwargs)
    monkeypatch.setattr(plot_utils.Canvas, "save", signalled)
    done = run("--num_epochs", "1", "--PRS", "True", "--PRR", "False", *FAST, "--results_path", tmp_path,
               "--resume", small_run / "checkpoint.pt")
    one_line_error(done, 130, f"interrupted while drawing the pictures; {small_run / 'checkpoint.pt'} holds all 1 "
                              f"epochs; continue with: ")


def test_a_second_signal_after_the_message_adds_no_line(capsys):
    with signals.SIGNALS.caught():
        with pytest.raises(SystemExit) as first:
            report.fail("interrupted in epoch 3; the checkpoint ...", 130)
        with pytest.raises(SystemExit) as second:
            report.fail("interrupted", 130)
    assert first.value.code == second.value.code == 130
    assert capsys.readouterr().err.count("\n") == 1


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
    saved = small_run / "checkpoint.pt"
    one_line_error(done, 143, f"interrupted in the final evaluation; {saved} holds all 1 epochs; continue with: ")
    command = shlex.split(done.stderr.split("continue with: ")[1])
    assert command[-2:] == ["--resume", str(saved)] and "--iw_samples" in command


def test_resume_command_names_the_script_as_run():
    command = signals.resume_command("/opt/vae/run_main.py", ["--dim_z", "2", "--resume=old.pt", "--num_epochs", "9"],
                                      "res/checkpoint.pt")
    assert command == "python /opt/vae/run_main.py --dim_z 2 --num_epochs 9 --resume res/checkpoint.pt"


def test_the_continue_command_names_the_interpreter_that_ran(monkeypatch, tmp_path):
    assert signals.python_command() in ("python", sys.executable)
    monkeypatch.setenv("PATH", str(tmp_path))  # no python on PATH: name this interpreter
    assert signals.python_command() == sys.executable
    (tmp_path / "python").symlink_to(sys.executable)
    assert signals.python_command() == "python"
