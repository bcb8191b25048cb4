"""The command line: the parser built from the table of flags (flags.py), the checks of values that depend on one
another, on the machine or on the checkpoint, and the run's Plan, frozen once.

torch is imported only where it must be: for the device and for a checkpoint. --help and every usage error
that needs neither return at once.
"""
import argparse
import os
from typing import NamedTuple

import hardware
import mnist_data
import plot_utils
from config import IW_ROWS, VAEConfig
from flags import DEFAULTS, FLAG, FLAGS, Settings, on_resume, problem
from report import PROG, reason, say, what_is
from results_folder import LOCK_NAME, is_output, is_temporary


class Grid(NamedTuple):
    """One picture grid's flags: drawn or not, n_x by n_y images, each resized by factor."""
    name: str
    on: bool
    n_x: int
    n_y: int
    factor: float

    @property
    def count(self):
        """Images in the grid; 0 when it is not drawn."""
        return self.n_x * self.n_y if self.on else 0


class Plan(NamedTuple):
    """A checked command line: the settings, the model's config, the checkpoint to resume (or None) and the
    training flags the resumed run changes (lines to print), the device, the picture grids."""
    settings: Settings
    config: VAEConfig
    checkpoint: object
    changed: tuple
    device: object
    grids: dict


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (the full usage of 36 flags would bury the message)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def number(kind, name, texts):
    """The parser of an int or float flag's text: only the ASCII forms (Python's int and float also take other
    scripts' digits and underscores), so that what runs is what the user sees; the text is kept in texts[name]
    for the messages."""
    def parse(text):
        texts[name] = text
        if not text.isascii() or "_" in text:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'} in ASCII "
                                             f"digits, got {text!r}")
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got "
                                             f"{text!r}") from None
    return parse


def str2bool(text):
    """Parse True/False/true/false/yes/no/1/0 (the original's type=bool made every string True)."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected True or False (or yes/no, 1/0), got {text!r}")
    return value


def build_parser(texts=None):
    """The command line from FLAGS: every flag defaults to None here, so that a resumed run knows which were
    given; the help shows each one's real default. texts receives each number's text as typed."""
    p = Parser(prog=PROG, description="PyTorch VAE for MNIST (Kingma & Welling, arXiv 1312.6114)")
    texts = {} if texts is None else texts
    for f in FLAGS:
        parse = {bool: str2bool, int: number(int, f.name, texts), float: number(float, f.name, texts), str: str}[f.kind]
        shown = "" if f.default is None or "(default" in f.help else f" (default {f.default})"
        p.add_argument(f"--{f.name}", type=parse, default=None, choices=f.choices, help=f.help + shown,
                       metavar=f.metavar)
    return p


def parse_args(argv=None):
    """Parse and check the command line: the run's Plan. A bad value is a usage error: one line, exit 2."""
    texts = {}
    parser = build_parser(texts)
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        return plan(given, texts)
    except UsageError as e:
        parser.error(str(e))


class UsageError(Exception):
    """A value the run cannot take; the message is the usage error's line."""


def plan(given, texts=None):
    """The Plan of the flags given (name -> value; texts: the numbers as typed, for the messages): every check
    that can fail before any work, in the order that needs no torch for as long as it can."""
    for name, value in given.items():
        why = problem(FLAG[name], value, (texts or {}).get(name))
        if why:
            raise UsageError(f"--{name} {why}")
    checkpoint, changed = read_checkpoint(given["resume"]) if "resume" in given else None, ()
    if checkpoint is None:
        values = {**DEFAULTS, **given}
    else:
        values, changed = resumed_values(given, checkpoint)
    if values["results_path"] is None:
        values["results_path"] = "results"
    if values["lr_min"] > values["learn_rate"] and "lr_min" not in given:
        values["lr_min"] = values["learn_rate"]
    settings = Settings(**values)
    config = VAEConfig(settings.dim_z, settings.n_hidden, settings.keep_prob, settings.conditional)
    check_values(settings, checkpoint)
    grids = picture_grids(settings)
    check_pictures(settings, grids)
    missing = hardware.missing_device(settings.device)
    if missing:
        raise UsageError(f"--device {settings.device}: {missing}")
    device = hardware.pick_device(settings.device)
    check_memory(settings, config, grids, device)
    if settings.precision == "bf16":
        fp32_s, bf16_s = hardware.product_seconds(device, config, settings.batch_size * settings.iw_train)
        if bf16_s > fp32_s:
            say(f"--precision bf16: bf16 products of the run's layer shapes are slower than fp32 on this {device.type} "
                f"({bf16_s * 1e3:.2f} ms against {fp32_s * 1e3:.2f} ms, measured at start); fp32 would train faster")
    return Plan(settings, config, checkpoint, tuple(changed), device, grids)


PICTURES = ("PRR", "PMLR", "PRS", "PARR", "PIR")


def picture_grids(s):
    """Each picture's Grid: PARR's columns are the image and the ten digits, PIR's the two ends and the
    decoded points between them."""
    columns = {"PARR": 1 + mnist_data.NUM_LABELS, "PIR": s.PIR_n_img_x + 2}
    return {name: Grid(name, getattr(s, name), columns.get(name) or getattr(s, f"{name}_n_img_x"),
                       getattr(s, f"{name}_n_img_y"), getattr(s, f"{name}_resize_factor"))
            for name in PICTURES}


def test_images_needed(s, grids):
    """How many test images the drawn pictures take (the first ones; PIR's pairs are drawn from all)."""
    return max(grids["PRR"].count, s.PMLR_n_samples if s.PMLR else 0, s.PARR_n_img_y if s.PARR else 0,
               2 * s.PIR_n_img_y if s.PIR else 0)


def read_checkpoint(path):
    """The checked checkpoint at path; a usage error saying what is wrong with it."""
    import checkpoint
    try:
        return checkpoint.read(path)
    except ValueError as e:
        raise UsageError(f"--resume: {e}") from None


def resumed_values(given, checkpoint):
    """A resumed run's flags by flags.on_resume (the model's from the checkpoint's config), its folder the
    checkpoint's unless given, and the lines that say which training flags it changes."""
    try:
        values, changed = on_resume(given, {**checkpoint.args, **checkpoint.config.as_saved()})
    except ValueError as e:
        raise UsageError(str(e)) from None
    if values["results_path"] is None:
        values["results_path"] = os.path.dirname(checkpoint.path) or "."
    if values["num_epochs"] < checkpoint.epoch:
        raise UsageError(f"--num_epochs {values['num_epochs']} is fewer than the {checkpoint.epoch} epochs the "
                         f"checkpoint has finished")
    return values, changed


def check_values(s, checkpoint):
    """Usage errors for values that depend on one another or on the file system."""
    if s.lr_min > s.learn_rate:
        raise UsageError(f"--lr_min must be from 0 to --learn_rate {s.learn_rate!r} (got {s.lr_min!r})")
    if s.iw_gradient == "dreg" and s.iw_train == 1:
        raise UsageError("--iw_gradient dreg needs --iw_train K > 1 (the -ELBO's KL is in closed form: there is no "
                         "sampled log q whose score term DReG removes)")
    if os.path.lexists(s.results_path) and not os.path.isdir(s.results_path):
        raise UsageError(f"--results_path {s.results_path} is {what_is(s.results_path)}, not a folder")
    if os.path.isdir(s.results_path):
        check_outputs_are_files(s.results_path)


def check_outputs_are_files(path):
    """A usage error for an entry of the results folder that has the name of a file the run writes (or of its
    temporary file) and is not a file: a folder named checkpoint.pt would stop the run only after an epoch."""
    try:
        names = os.listdir(path)
    except OSError as e:
        raise UsageError(f"cannot read --results_path {path}: {reason(e)}") from None
    for name in sorted(names):
        entry = os.path.join(path, name)
        if (is_output(name) or is_temporary(name) or name == LOCK_NAME) \
                and not (os.path.islink(entry) or os.path.isfile(entry)):
            raise UsageError(f"--results_path {path}: {name} in it is {what_is(entry)}, where the run writes a "
                             f"file; move it away")


def check_pictures(s, grids):
    """Usage errors for the pictures that are drawn (a picture that is off is neither checked nor built)."""
    for grid in grids.values():
        check_grid(grid)
    if grids["PRR"].count > mnist_data.TEST_SIZE:
        raise UsageError(f"the PRR grid holds {grids['PRR'].count} images; at most {mnist_data.TEST_SIZE} "
                         f"(the test set)")
    if s.PARR and s.PARR_n_img_y > mnist_data.TEST_SIZE:
        raise UsageError(f"--PARR_n_img_y {s.PARR_n_img_y} rows are more than the {mnist_data.TEST_SIZE} test "
                         f"images")
    if s.PIR and 2 * s.PIR_n_img_y > mnist_data.TEST_SIZE:
        raise UsageError(f"--PIR_n_img_y {s.PIR_n_img_y} pairs need {2 * s.PIR_n_img_y} test images; there are "
                         f"{mnist_data.TEST_SIZE}")
    if s.PMLR and s.dim_z != 2:
        raise UsageError(f"--PMLR True needs --dim_z 2 (got {s.dim_z})")
    if s.PARR and not s.conditional:
        raise UsageError("--PARR True needs --conditional True (it decodes each image's z as every digit)")


def check_grid(grid):
    """Usage errors for one drawn grid: its cells at least a pixel, the JPEG's sides within its limit."""
    if not grid.on:
        return
    side = plot_utils.cell_size(grid.factor)
    if side < 1:
        raise UsageError(f"--{grid.name}_resize_factor {grid.factor!r} makes each image smaller than one pixel")
    if max(grid.n_x, grid.n_y) * side > plot_utils.JPEG_MAX_SIDE:
        raise UsageError(f"--{grid.name} image would be {grid.n_x * side}x{grid.n_y * side} pixels; JPEG allows at "
                         f"most {plot_utils.JPEG_MAX_SIDE} a side")


def check_memory(s, config, grids, device):
    """Usage errors for a model, a batch or a picture larger than the memory there is."""
    try:
        hardware.check_memory(config.training_bytes(1), f"the model (--n_hidden {s.n_hidden}, --dim_z {s.dim_z})",
                              device.type)
        hardware.check_memory(config.training_bytes(s.batch_size * s.iw_train), f"a batch of --batch_size "
                              f"{s.batch_size}" + (f" x --iw_train {s.iw_train} samples" if s.iw_train > 1 else ""),
                              device.type)
        if s.iw_samples:
            hardware.check_memory(config.training_bytes(IW_ROWS), f"the --iw_samples evaluation ({IW_ROWS} decoder "
                                  f"rows at a time)", device.type)
        for grid in grids.values():
            if grid.on:  # the canvas and its JPEG in the machine's memory; the grid's inputs on the device
                side, what = plot_utils.cell_size(grid.factor), f"the {grid.name} picture"
                hardware.check_memory(plot_utils.grid_bytes(grid.n_x, grid.n_y, grid.factor),
                                      f"{what} ({grid.n_x * side}x{grid.n_y * side} pixels)", "cpu")
                hardware.check_memory(grid.count * (4 * max(config.dim_z, 2) + 8 + 8), f"{what}'s {grid.count} "
                                      f"latent vectors and labels", device.type)
    except ValueError as e:
        raise UsageError(str(e)) from None
