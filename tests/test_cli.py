"""cli.py: the flags, their defaults, every usage error, and a resume's rules (runs in this process, except
where a real process matters: an import that must not happen, a traceback that must not show)."""
import dataclasses
import os
import subprocess
import sys

import pytest
import torch

import cli
import config
import flags
import hardware
import results_folder
from config import VAEConfig
from conftest import ROOT, one_line_error, run, run_cli, usage_error

SEED_DEFAULTS = dict(dim_z=20, results_path="results", add_noise=False, n_hidden=500, learn_rate=1e-3,
                     num_epochs=20, batch_size=128, PRR=True, PRR_n_img_x=10, PRR_n_img_y=10,
                     PRR_resize_factor=1.0, PMLR=False, PMLR_n_img_x=20, PMLR_n_img_y=20,
                     PMLR_resize_factor=1.0, PMLR_z_range=2.0, PMLR_n_samples=5000,
                     data_dir="data", seed=1, device="auto", iw_samples=0, resume=None, PMLR_grid="linear")

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
    (["--iw_gradient", "dreg"], "--iw_gradient dreg needs --iw_train K > 1"),
    (["--iw_gradient", "stl", "--iw_train", "5"], "--iw_gradient"),
    (["--device", "tpu"], "--device"),
    (["--resume", "no/such/checkpoint.pt"], "no such file"),
]
def test_defaults_are_the_seeds_plus_the_new_flags():
    args, model, checkpoint, changed, device, grids = cli.parse_args([])
    assert model == VAEConfig() and changed == ()
    assert checkpoint is None and device == hardware.pick_device("auto")
    assert grids["PRR"] == cli.Grid("PRR", True, 10, 10, 1.0) and grids["PRR"].count == 100
    assert grids["PMLR"].count == 0 and grids["PRS"].count == 0
    assert dataclasses.asdict(args) == {**flags.DEFAULTS, "results_path": "results"}
    assert SEED_DEFAULTS.items() <= dataclasses.asdict(args).items()  # the original's defaults, unchanged
    assert flags.DEFAULTS["keep_prob"] == config.KEEP_PROB


@pytest.mark.parametrize("argv,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_are_one_line_usage_errors(capsys, argv, needle):
    err = usage_error(capsys, argv)
    assert needle in err
    assert err.startswith("run_main.py: error:")
    assert err.count("\n") == 1, err


def test_a_picture_larger_than_memory_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setattr(hardware, "available_memory", lambda device_type="cpu": 7e9)
    err = usage_error(capsys, ["--PRR_n_img_x", "100", "--PRR_n_img_y", "100", "--PRR_resize_factor", "23"])
    assert "the PRR picture (64400x64400 pixels) needs about 7.32 GB of memory; 7 GB is available" in err
    cli.parse_args(["--PRR_n_img_x", "10", "--PRR_resize_factor", "23"])  # 6440x644 fits


def test_results_path_that_is_a_file(capsys, tmp_path):
    existing = tmp_path / "results"
    existing.write_text("mine")
    err = usage_error(capsys, ["--results_path", str(existing)])
    assert "is a file, not a folder" in err
    assert existing.read_text() == "mine"


@pytest.mark.parametrize("text,value", [("True", True), ("true", True), ("yes", True), ("1", True),
                                        ("False", False), ("false", False), ("no", False), ("0", False)])
@pytest.mark.parametrize("flag", ["add_noise", "PRR", "PMLR", "PRS", "binarize"])
def test_boolean_spellings(flag, text, value):
    args = cli.parse_args([f"--{flag}", text, "--dim_z", "2"]).settings
    assert getattr(args, flag) is value


def test_usage_error_from_the_command_line_has_no_traceback():
    result = run_cli("--add_noise", "perhaps", timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "--add_noise" in result.stderr


def test_messages_say_what_is_wrong(capsys, monkeypatch):
    err = usage_error(capsys, ["--keep_prob", "1e-40"])
    assert "--keep_prob must be from 0.001 to 1" in err
    monkeypatch.setattr(hardware, "available_memory", lambda device_type="cpu": 4 * 10**9)
    err = usage_error(capsys, ["--batch_size", "10000000", "--n_hidden", "50"])
    assert "a batch of --batch_size 10000000 needs about" in err
    err = usage_error(capsys, ["--batch_size", "100000", "--iw_train", "50", "--n_hidden", "50"])
    assert "a batch of --batch_size 100000 x --iw_train 50 samples needs" in err
    err = usage_error(capsys, ["--n_hidden", "100000"])
    assert "the model (--n_hidden 100000, --dim_z 20) needs" in err


def test_bf16_says_so_only_where_its_measured_products_are_slower(capsys, monkeypatch):
    monkeypatch.setattr(hardware, "pick_device", lambda name: torch.device("cpu"))
    timed = []
    monkeypatch.setattr(hardware, "product_seconds", lambda device, config, rows: timed.append(rows) or (1e-3, 2e-3))
    cli.parse_args(["--precision", "bf16", "--iw_train", "5"])
    assert "bf16 products of the run's layer shapes are slower than fp32 on this cpu (2.00 ms against 1.00 ms" \
        in capsys.readouterr().out and timed == [128 * 5]
    monkeypatch.setattr(hardware, "product_seconds", lambda device, config, rows: (2e-3, 1e-3))
    cli.parse_args(["--precision", "bf16"])
    cli.parse_args([])  # fp32 measures nothing
    assert capsys.readouterr().out == "" and len(timed) == 1


def test_help_and_usage_errors_import_no_torch():
    for argv in (["--help"], ["--dim_z", "0"], ["--PRR_n_img_x", "0"], ["--iw_gradient", "dreg"]):
        done = subprocess.run([sys.executable, "-X", "importtime", os.path.join(ROOT, "run_main.py"), *argv],
                              capture_output=True, text=True, timeout=60)
        imported = [line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
        assert done.returncode == (0 if argv == ["--help"] else 2), done.stderr
        assert imported and not [m for m in imported if m.split(".")[0] in ("torch", "torchvision")], argv


def test_help_shows_every_flags_default():
    text = cli.build_parser().format_help().replace("\n", " ")
    for f in flags.FLAGS:
        if f.default is not None:
            assert f"default {f.default}" in " ".join(text.split()), f.name


HUGE = [["--iw_samples", str(10**311)], ["--kl_warmup", str(10**400)], ["--batch_size", str(10**310)],
        ["--n_hidden", str(10**200)], ["--iw_train", str(10**310)], ["--PRR_resize_factor", "1e308"],
        ["--num_epochs", str(10**400), "--lr_schedule", "cosine"], ["--learn_rate", "1e400"],
        ["--PMLR_z_range", "inf", "--PMLR", "True", "--dim_z", "2"], ["--seed", str(2**64)]]


@pytest.mark.parametrize("argv", HUGE, ids=[a[0] for a in HUGE])
def test_every_number_has_a_range_checked_when_parsed(capsys, argv, tmp_path):
    folder = tmp_path / "R"
    err = usage_error(capsys, [*argv, "--results_path", str(folder)])
    assert err.startswith(f"run_main.py: error: {argv[0]} must be") and err.count("\n") == 1, err
    assert not folder.exists()


def test_a_low_learning_rate_needs_no_lr_min(capsys):
    settings = cli.parse_args(["--learn_rate", "1e-6"]).settings
    assert (settings.learn_rate, settings.lr_min) == (1e-6, 1e-6)  # the default 1e-5 lowered to the rate
    settings = cli.parse_args(["--learn_rate", "1e-6", "--lr_schedule", "cosine"]).settings
    assert settings.lr_min == 1e-6
    err = usage_error(capsys, ["--learn_rate", "1e-6", "--lr_min", "1e-5", "--lr_schedule", "cosine"])
    assert "--lr_min must be from 0 to --learn_rate 1e-06 (got 1e-05)" in err


def test_a_picture_that_is_off_is_neither_checked_nor_sized(capsys, monkeypatch):
    monkeypatch.setattr(hardware, "available_memory", lambda device_type="cpu": 10**9)
    cli.parse_args(["--PMLR_n_img_x", "30000", "--PRS_resize_factor", "2000"])  # off: not drawn, not sized
    err = usage_error(capsys, ["--PMLR_n_img_x", "30000", "--PMLR", "True", "--dim_z", "2"])
    assert "JPEG allows at most 65500 a side" in err
    err = usage_error(capsys, ["--PRR_n_img_x", "2340", "--PRR_n_img_y", "1"])  # 65,520 pixels: libjpeg refuses it
    assert "--PRR image would be 65520x28 pixels; JPEG allows at most 65500 a side" in err
    err = usage_error(capsys, ["--PRS_resize_factor", "200", "--PRS", "True"])
    assert "the PRS picture (56000x56000 pixels) needs about" in err


def test_usage_errors_of_the_conditional_pictures(capsys):
    cases = {("--PARR", "True"): "--PARR True needs --conditional True",
             ("--conditional", "True", "--PMLR", "True", "--dim_z", "5"): "--PMLR True needs --dim_z 2 (got 5)",
             ("--PIR", "True", "--PIR_n_img_x", "1"): "--PIR_n_img_x must be from 2",
             ("--PIR", "True", "--PIR_n_img_y", "5001", "--PIR_resize_factor", "0.1"): "pairs need 10002 test images",
             ("--conditional", "True", "--PARR", "True", "--PARR_n_img_y", "10001", "--PARR_resize_factor", "0.1"):
                 "more than the 10000 test",
             ("--conditional", "True", "--PARR", "True", "--PARR_resize_factor", "0.01"): "smaller than one pixel",
             ("--conditional", "maybe"): "expected True or False",
             ("--PIR", "True", "--PIR_n_img_x", "65499"): "--PIR image would be"}
    for argv, needle in cases.items():
        assert needle in usage_error(capsys, list(argv)), argv


def test_the_analogy_and_interpolation_grids_count_their_fixed_columns():
    grids = cli.parse_args(["--conditional", "True", "--PARR", "True", "--PIR", "True", "--PIR_n_img_x", "6",
                            "--PARR_n_img_y", "3"]).grids
    assert (grids["PARR"].n_x, grids["PARR"].n_y) == (11, 3)
    assert (grids["PIR"].n_x, grids["PIR"].n_y) == (8, 10)


@pytest.mark.parametrize("argv", [["--num_epochs", "١٢"], ["--dim_z", "2_0"], ["--learn_rate", "１e-3"],
                                  ["--seed", "٣"]])
def test_numbers_are_read_in_ascii_digits_only(capsys, argv):
    err = usage_error(capsys, argv)
    assert f"in ASCII digits, got {argv[1]!r}" in err and err.count("\n") == 1


def test_a_data_dir_that_is_a_file_is_named_as_one(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    done = run("--num_epochs", "1", "--data_dir", tmp_path / "data", "--results_path", tmp_path / "R")
    one_line_error(done, 1, f"{tmp_path / 'data'} is a file, not a folder; --data_dir names the folder holding")
    assert not (tmp_path / "R").exists()


def test_results_paths_that_are_something_else_are_named(capsys, tmp_path):
    os.mkfifo(tmp_path / "pipe")
    assert "--results_path " + str(tmp_path / "pipe") + " is a named pipe, not a folder" in usage_error(
        capsys, ["--results_path", str(tmp_path / "pipe")])
    (tmp_path / "R" / results_folder.LOCK_NAME).mkdir(parents=True)
    assert f"{results_folder.LOCK_NAME} in it is a folder, where the run writes a file" in usage_error(
        capsys, ["--results_path", str(tmp_path / "R")])


def test_a_number_beyond_a_floats_reach_is_shown_as_typed(capsys):
    assert "(got 1e-400)" in usage_error(capsys, ["--learn_rate", "1e-400"])
    assert "(got 1e999)" in usage_error(capsys, ["--PMLR_z_range", "1e999"])
