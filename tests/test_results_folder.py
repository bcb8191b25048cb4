"""results_folder.py: whole-or-nothing writes, the lock, an earlier run moved aside and never deleted, and which
checkpoint continues a folder."""
import errno
import fcntl
import json
import os
import shutil
import signal

import pytest
from PIL import Image

import results_folder
import run_main
from conftest import FAST, edited, epochs_printed, failing_open, metrics, one_line_error, run, saved_epoch, set_field


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


def test_a_locked_folder_stops_a_second_run(small_run, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    with open(folder / results_folder.LOCK_NAME, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running run_main.py holds it
        done = run("--num_epochs", "1", *FAST, "--results_path", folder)
    one_line_error(done, 1, f"another run is writing to {folder}")
    assert sorted(os.listdir(folder)) == [results_folder.LOCK_NAME]
    shutil.copy(small_run / "checkpoint.pt", folder / "checkpoint.pt")
    with open(folder / results_folder.LOCK_NAME, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = run("--num_epochs", "2", *FAST, "--resume", folder / "checkpoint.pt")
    one_line_error(done, 1, f"another run is writing to {folder}")
    assert done.stdout == ""  # nothing said about resuming a run it cannot continue
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


def test_a_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(mnist_dir, tmp_path, monkeypatch):
    folder = tmp_path / "results"
    writes = []
    failing_open(monkeypatch, lambda p: p.endswith("checkpoint.pt.tmp") and writes.append(p) or len(writes) > 1,
                 OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    done = run("--num_epochs", "3", *FAST, "--results_path", folder)
    one_line_error(done, 1, f"cannot write {folder / 'checkpoint.pt'}: no space left on device; "
                            f"{folder / 'checkpoint.pt'} holds 1 epochs; continue with: ")
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]
    assert saved_epoch(folder) == 1  # epoch 1's checkpoint failed; epoch 0's stays
    assert [r["epoch"] for r in metrics(folder)] == ["0"]  # the files agree with the checkpoint
    assert "PRR_epoch_01.jpg" not in os.listdir(folder)


def test_a_read_only_folder_is_one_line(mnist_dir, tmp_path, monkeypatch):
    folder = tmp_path / "results"
    failing_open(monkeypatch, lambda p: True, OSError(errno.EROFS, os.strerror(errno.EROFS)))
    done = run("--num_epochs", "1", *FAST, "--results_path", folder)
    one_line_error(done, 1, f"cannot write {folder / 'input.jpg'}: read-only file system")
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]


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


def test_a_fresh_run_moves_every_picture_of_a_conditional_run_aside(cvae_run, mnist_dir, tmp_path):
    import shutil
    results, _ = cvae_run
    folder = tmp_path / "R"
    shutil.copytree(results, folder)
    (folder / "PMLR_epoch_01_33.jpg").write_text("mine")
    before = sorted(os.listdir(folder))
    done = run("--num_epochs", "1", *FAST, "--results_path", folder)
    assert done.status == 0, done.stderr
    moved = sorted(os.listdir(folder / "previous_run_1"))
    assert "PMLR_epoch_01_3.jpg" in moved and "PARR_epoch_01.jpg" in moved and "PIR_epoch_00.jpg" in moved
    assert moved == [name for name in before if name not in ("PMLR_epoch_01_33.jpg", results_folder.LOCK_NAME)]
    assert (folder / "PMLR_epoch_01_33.jpg").read_text() == "mine"
    assert not results_folder.is_output("PMLR_epoch_01_33.jpg") and not results_folder.is_output("PARR_epoch_1.jpg")


def test_a_run_that_only_draws_keeps_every_picture_and_evaluation_the_folder_had(small_run, tmp_path):
    folder = tmp_path / "R"
    shutil.copytree(small_run, folder)
    first = run("--PRR", "True", "--iw_samples", "2", *FAST, "--resume", folder / "checkpoint.pt")
    assert first.status == 0, first.stderr
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder) if name != "checkpoint.pt"}
    assert {"PRR_epoch_00.jpg", "evaluation.json", "input.jpg"} <= set(before)
    again = run("--PRR", "True", "--PRR_n_img_y", "3", "--iw_samples", "3", *FAST, "--resume", folder / "checkpoint.pt")
    assert again.status == 0, again.stderr
    for name, data in before.items():
        if name not in results_folder.RECORD:
            assert (folder / name).read_bytes() == data, name  # kept as it was
    for name in ("PRR_epoch_00", "input"):
        assert f"{name}.jpg is kept; this run's version is {name}-2.jpg" in again.stdout
        with Image.open(folder / f"{name}-2.jpg") as drawn:
            assert drawn.size == (280, 84)  # the new grid, three rows
    assert json.loads((folder / "evaluation-2.json").read_text())["K"] == 3
    same = run("--PRR", "True", "--PRR_n_img_y", "3", *FAST, "--resume", folder / "checkpoint.pt")
    assert same.status == 0 and "is kept" not in same.stdout  # the same pictures again: nothing new
    assert not (folder / "PRR_epoch_00-3.jpg").exists()
    fresh = run("--num_epochs", "1", "--PRR", "False", *FAST, "--results_path", folder)
    assert fresh.status == 0 and {"PRR_epoch_00-2.jpg", "evaluation-2.json"} <= set(
        os.listdir(folder / "previous_run_1"))  # the versions move aside with the run they belong to


@pytest.mark.parametrize("name", ["checkpoint.pt", "metrics.csv.tmp", "PRR_epoch_00.jpg", "settings.json"])
def test_an_entry_with_an_outputs_name_that_is_no_file_stops_the_run_before_any_work(tmp_path, name):
    folder = tmp_path / "results"
    (folder / name).mkdir(parents=True)
    done = run("--num_epochs", "1", *FAST, "--results_path", folder)
    one_line_error(done, 2, f"--results_path {folder}: {name} in it is a folder, where the run writes a file")
    assert os.listdir(folder) == [name]  # as it was: no lock file, nothing moved


def test_a_resume_without_num_epochs_finishes_the_checkpoints_plan(small_run, tmp_path):
    planned = edited(small_run / "checkpoint.pt", set_field("args", "num_epochs", value=3),
                     tmp_path / "R" / "checkpoint.pt")
    done = run("--PRR", "False", *FAST, "--resume", planned)
    assert done.status == 0 and epochs_printed(done.stdout) == [1, 2], done
    done = run("--PRR", "False", *FAST, "--resume", planned)  # finished: it only draws and evaluates
    assert done.status == 0 and epochs_printed(done.stdout) == [] and saved_epoch(planned.parent) == 3


def test_a_link_with_an_outputs_name_moves_aside_with_the_run_never_replaced(small_run, tmp_path):
    folder = tmp_path / "R"
    folder.mkdir()
    os.symlink(tmp_path / "nowhere", folder / "metrics.csv")
    done = run("--num_epochs", "1", "--PRR", "False", *FAST, "--results_path", folder)
    assert done.status == 0, done.stderr
    assert os.path.islink(folder / "previous_run_1" / "metrics.csv")
    assert os.readlink(folder / "previous_run_1" / "metrics.csv") == str(tmp_path / "nowhere")
