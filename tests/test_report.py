"""report.py: the run's lines and its one-line failures."""

import io
import sys

import pytest

import report
import training
from conftest import FAST, one_line_error, run

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


def test_a_failing_standard_output_costs_one_line_and_never_the_run(monkeypatch, capsys):
    class Full(io.StringIO):
        def write(self, text):
            raise OSError(28, "No space left on device")
    monkeypatch.setattr(report, "quiet_stdout", lambda: None)
    monkeypatch.setattr(sys, "stdout", Full())
    report.say("epoch 0")
    report.say("epoch 1")
    assert capsys.readouterr().err.count("cannot write to standard output (no space left on device)") == 1


def test_a_failure_prints_one_line_once_and_keeps_its_status(capsys, monkeypatch):
    monkeypatch.setattr(report.Failure, "status", None)
    for message, status in (("first", 2), ("second", 1)):
        with pytest.raises(SystemExit) as stopped:
            report.fail(message, status)
        assert stopped.value.code == 2
    assert capsys.readouterr().err == "run_main.py: error: first\n"


def test_durations_for_people():
    assert [report.duration(s) for s in (5, 89.6, 90, 5399, 5400, 7200)] == [
        "5 s", "90 s", "1.5 min", "90.0 min", "1.5 h", "2.0 h"]
