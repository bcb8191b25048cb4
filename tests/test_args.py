"""Argument parsing: the seed's flags and defaults, booleans, and one-line usage errors."""
import pytest

import run_main
from conftest import run_cli

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
    (["--learn_rate", "0"], "--learn_rate"),
    (["--learn_rate", "-0.1"], "--learn_rate"),
    (["--learn_rate", "nan"], "--learn_rate"),
    (["--num_epochs", "0"], "--num_epochs"),
    (["--batch_size", "0"], "--batch_size"),
    (["--PRR_n_img_x", "0"], "--PRR_n_img_x"),
    (["--PRR_n_img_y", "-1"], "--PRR_n_img_y"),
    (["--PRR_resize_factor", "0"], "--PRR_resize_factor"),
    (["--PRR_resize_factor", "-2"], "--PRR_resize_factor"),
    (["--PRR_resize_factor", "0.01"], "--PRR_resize_factor"),
    (["--PRR_n_img_x", "101", "--PRR_n_img_y", "100"], "PRR grid"),
    (["--PRR_n_img_x", "100", "--PRR_resize_factor", "30"], "JPEG"),
    (PMLR_ON + ["--PMLR_n_img_x", "0"], "--PMLR_n_img_x"),
    (PMLR_ON + ["--PMLR_n_img_y", "0"], "--PMLR_n_img_y"),
    (PMLR_ON + ["--PMLR_resize_factor", "0"], "--PMLR_resize_factor"),
    (PMLR_ON + ["--PMLR_z_range", "0"], "--PMLR_z_range"),
    (PMLR_ON + ["--PMLR_z_range", "-1"], "--PMLR_z_range"),
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


def usage_error(capsys, argv):
    """Parse argv expecting a usage error; return its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        run_main.parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_defaults_are_the_seeds():
    args, checkpoint = run_main.parse_args([])
    assert checkpoint is None
    assert vars(args) == SEED_DEFAULTS


@pytest.mark.parametrize("argv,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_are_one_line_usage_errors(capsys, argv, needle):
    err = usage_error(capsys, argv)
    assert needle in err
    assert err.startswith("run_main.py: error:")
    assert err.count("\n") == 1, err
    assert "Traceback" not in err


def test_results_path_that_is_a_file(capsys, tmp_path):
    existing = tmp_path / "results"
    existing.write_text("mine")
    err = usage_error(capsys, ["--results_path", str(existing)])
    assert "existing file" in err
    assert existing.read_text() == "mine"


@pytest.mark.parametrize("text,value", [("True", True), ("true", True), ("yes", True), ("1", True),
                                        ("False", False), ("false", False), ("no", False), ("0", False)])
@pytest.mark.parametrize("flag", ["add_noise", "PRR", "PMLR"])
def test_boolean_spellings(flag, text, value):
    args, _ = run_main.parse_args([f"--{flag}", text, "--dim_z", "2"])
    assert getattr(args, flag) is value


def test_usage_error_from_the_command_line_has_no_traceback():
    result = run_cli("--add_noise", "perhaps", timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "--add_noise" in result.stderr
    assert "Traceback" not in result.stderr


def test_resume_command_replaces_the_resume_flag():
    command = run_main.resume_command(["--dim_z", "2", "--resume=old.pt", "--num_epochs", "9"], "res/checkpoint.pt")
    assert command == "python run_main.py --dim_z 2 --num_epochs 9 --resume res/checkpoint.pt"
