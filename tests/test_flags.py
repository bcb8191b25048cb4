"""flags.py: the table of flags as Settings' fields, the check of a value, and the one rule for each kind of flag on a
resumed run."""

import dataclasses

import pytest

import cli
import config
import flags
import training


def test_the_settings_are_frozen():
    settings = cli.parse_args([]).settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.dim_z = 3


def test_the_choices_match_the_models(capsys):
    assert flags.FLAG["lr_schedule"].choices == ("constant", "cosine")
    for schedule in flags.FLAG["lr_schedule"].choices:
        assert training.learning_rate(3, 10, 1e-3, 1e-5, schedule) > 0
    assert flags.FLAG["keep_prob"].low == config.KEEP_PROB_MIN and flags.DEFAULTS["keep_prob"] == config.KEEP_PROB
    assert flags.FLAG["dim_z"].high == flags.FLAG["n_hidden"].high == config.MAX_WIDTH


def test_every_flag_is_a_field_of_the_settings_with_its_type():
    fields = {f.name: f for f in dataclasses.fields(flags.Settings)}
    assert [f.name for f in flags.FLAGS] == list(fields)
    for f in flags.FLAGS:
        assert f.kind in (bool, int, float, str) and f.role in (flags.MODEL, flags.TRAINING, flags.RUN)
        assert f.default is None or isinstance(f.default, f.kind), f.name
        assert f.default is None or flags.problem(f, f.default) is None, f.name
    assert dataclasses.asdict(flags.Settings()) == flags.DEFAULTS


SAVED = {**flags.DEFAULTS, "dim_z": 2, "learn_rate": 1e-3, "num_epochs": 5, "seed": 7, "PRS": True}


def test_on_resume_each_kind_of_flag_follows_its_rule():
    values, notes = flags.on_resume({}, SAVED)
    assert values["dim_z"] == 2 and values["num_epochs"] == 5  # the model's, and training's, from the checkpoint
    assert values["seed"] == flags.DEFAULTS["seed"] and values["PRS"] is False  # the run's: never the checkpoint's
    assert notes == []
    values, notes = flags.on_resume({"learn_rate": 3e-4, "num_epochs": 9, "dim_z": 2, "PRS": True}, SAVED)
    assert (values["learn_rate"], values["num_epochs"], values["PRS"]) == (3e-4, 9, True)
    assert notes == ["--learn_rate is now 0.0003 (the checkpoint's run used 0.001)"]  # a new total is no news
    with pytest.raises(ValueError, match="--dim_z 3 differs from the checkpoint's 2; leave it out or give 2 "
                                         r"\(it would change the model\)"):
        flags.on_resume({"dim_z": 3}, SAVED)


def test_a_flag_a_checkpoint_lacks_ran_with_its_default():
    older = {k: v for k, v in SAVED.items() if k not in ("iw_gradient", "output_bias", "num_epochs")}
    values, notes = flags.on_resume({"iw_gradient": "dreg"}, older)
    assert values["output_bias"] == "zero" and values["num_epochs"] == flags.DEFAULTS["num_epochs"]
    assert notes == ["--iw_gradient is now dreg (the checkpoint's run used iwae)"]


def test_messages_show_the_value_given_never_a_rounded_one():
    assert flags.problem(flags.FLAG["keep_prob"], 1.0000001) == "must be from 0.001 to 1.0 (got 1.0000001)"
    assert "(got 1.00000000001e+38)" in flags.problem(flags.FLAG["learn_rate"], 1.00000000001e38)
    f = flags.FLAG["PRR_resize_factor"]
    assert flags.problem(f, f.high) is None
    why = flags.problem(f, f.high + 1e-9)
    assert f"at most {f.high!r} (got {f.high + 1e-9!r})" in why


def test_on_resume_never_reads_the_checkpoints_run_flags():
    damaged = {**SAVED, "PRR_resize_factor": None, "PMLR_z_range": 10**400, "seed": "x"}
    values, _ = flags.on_resume({}, damaged)
    assert values["PRR_resize_factor"] == 1.0 and values["seed"] == flags.DEFAULTS["seed"]
