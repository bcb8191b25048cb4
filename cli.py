"""The command line: every flag and its default in one table (read by --help, the checks, a resume's rules and
the tests), the check of every value, and the run's settings, frozen once.

torch is imported only where it must be: for the device and for a checkpoint. --help and every usage error
that needs neither return at once.
"""
import argparse
import dataclasses
import math
import os
from typing import NamedTuple

import hardware
import mnist_data
import safety

MODEL, TRAINING, RUN = "model", "training", "run"
MAX_WIDTH = 2**31 - 1  # the most units dim_z or n_hidden may name (torch's 32-bit sizes)
MAX_SIDE = 65535  # the most images a grid may have along a side: a JPEG's most pixels (the grid check is exact)


class Flag(NamedTuple):
    """One flag: its default and help, its role for a resumed run, and the values it may take."""
    name: str
    default: object
    help: str
    role: str = RUN  # MODEL: fixed by a checkpoint; TRAINING: kept from a checkpoint unless given; RUN: neither
    choices: tuple = None
    low: float = None  # a number's range, both ends included (a float's low end excluded when open_low)
    high: float = None
    open_low: bool = False
    fixes: str = None  # a MODEL flag's meaning, for the refusal of another value on resume


def grid_flags(name, what, n_x, n_y, on=False, x_help="images along x", y_help="images along y", x_low=1):
    """The four flags of one picture grid (three when n_x is None: its columns are fixed)."""
    return (Flag(name, on, what),
            *([] if n_x is None else [Flag(f"{name}_n_img_x", n_x, f"{name} {x_help}", low=x_low, high=MAX_SIDE)]),
            Flag(f"{name}_n_img_y", n_y, f"{name} {y_help}", low=1, high=MAX_SIDE),
            Flag(f"{name}_resize_factor", 1.0, f"{name} resize factor of each image", low=0.0, open_low=True,
                 high=MAX_SIDE / mnist_data.IMAGE_SIZE))


FLAGS = (
    Flag("dim_z", 20, "dimension of the latent vector", MODEL, low=1, high=MAX_WIDTH, fixes="the model"),
    Flag("results_path", None, "folder for images, metrics and checkpoint (default results, or the --resume "
                               "checkpoint's folder)"),
    Flag("add_noise", False, "train to denoise salt & pepper noise", MODEL, fixes="the data"),
    Flag("n_hidden", 500, "hidden units per MLP layer", MODEL, low=1, high=MAX_WIDTH, fixes="the model"),
    Flag("learn_rate", 1e-3, "Adam learning rate", TRAINING, low=0.0, open_low=True, high=1e38),
    Flag("lr_schedule", "constant", "constant, or cosine from --learn_rate at the first epoch to --lr_min at the "
                                    "last", TRAINING, choices=("constant", "cosine")),
    Flag("lr_min", 1e-5, "the cosine schedule's rate at the last epoch (lowered to --learn_rate when that is "
                         "lower and --lr_min is not given)", TRAINING, low=0.0, high=1e38),
    Flag("kl_warmup", 0, "the KL term's weight rises linearly from 0 to 1 over the first E epochs", TRAINING,
         low=0, high=10**6),
    Flag("iw_train", 1, "train on the IWAE bound with K samples per image; 1 is the VAE's -ELBO", TRAINING,
         low=1, high=10**6),
    Flag("iw_gradient", "iwae", "the encoder's gradient for --iw_train K > 1: iwae (the bound's own) or dreg "
                                "(doubly reparameterized, Tucker et al. 2018: the same bound and decoder gradient)",
         TRAINING, choices=("iwae", "dreg")),
    Flag("conditional", False, "a conditional VAE (the author's CVAE): the encoder and the decoder also see the "
                               "digit's one-hot label, so the decoder draws a chosen digit", MODEL, fixes="the model"),
    Flag("output_bias", "zero", "the decoder's initial output bias: zero (the original), or the logit of the "
                                "training pixels' mean (Burda et al.'s code)", MODEL, choices=("zero", "mean"),
         fixes="the model's start"),
    Flag("num_epochs", 20, "total number of epochs (counting resumed ones)", low=1, high=10**6),
    Flag("batch_size", 128, "batch size", TRAINING, low=1, high=10**7),
    *grid_flags("PRR", "plot reproduced (reconstructed) test images", 10, 10, on=True),
    *grid_flags("PMLR", "plot the learned 2-D manifold (needs --dim_z 2)", 20, 20),
    Flag("PMLR_z_range", 2.0, "PMLR linear grid spans [-z_range, z_range]", low=0.0, open_low=True, high=1.7e38),
    Flag("PMLR_n_samples", 5000, "test images in the labelled latent map", low=1, high=mnist_data.TEST_SIZE),
    Flag("PMLR_grid", "linear", "PMLR grid: linear over z_range, or at the standard normal's quantiles (the "
                                "paper's Fig. 4)", choices=("linear", "gaussian")),
    *grid_flags("PRS", "plot random samples of the generative model (conditional: image i is digit i mod 10)",
                10, 10),
    *grid_flags("PARR", "plot analogies: each row a test image, then its z decoded as the digits 0 to 9 (needs "
                        "--conditional True)", None, 10, y_help="rows (test images)"),
    *grid_flags("PIR", "plot interpolations: each row two test images at the ends, and the decoder along the line "
                       "between their encoder means", 10, 10, x_help="decoded images between each row's two "
                                                                      "test images (both means included; the grid "
                                                                      "is 2 wider)", x_low=2,
                y_help="rows (pairs of test images)"),
    Flag("data_dir", "data", "folder holding (or receiving) MNIST/raw"),
    Flag("binarize", False, "binarized MNIST: training images drawn afresh each batch, the test set binarized once",
         MODEL, fixes="the data"),
    Flag("keep_prob", 0.9, "dropout keep probability in training, 1.0 is no dropout (below 0.001 dropout's "
                           "scaling overflows)", MODEL, low=1e-3, high=1.0, fixes="the model's dropout"),
    Flag("precision", "fp32", "training's matrix products in fp32 or bf16 (evaluation is always fp32; bf16 pays "
                              "on a GPU or a CPU with AMX, not elsewhere)", TRAINING, choices=("fp32", "bf16")),
    Flag("seed", 1, "random seed", low=-2**63, high=2**64 - 1),
    Flag("device", "auto", "auto: CUDA, then MPS, then CPU", choices=hardware.DEVICES),
    Flag("iw_samples", 0, "after training, the importance-weighted test log-likelihood with K samples (0: off)",
         low=0, high=10**9),
    Flag("resume", None, "continue from a checkpoint.pt"),
)
FLAG = {f.name: f for f in FLAGS}
DEFAULTS = {f.name: f.default for f in FLAGS}
Settings = dataclasses.make_dataclass("Settings", [f.name for f in FLAGS], frozen=True)
Settings.__doc__ = "The run's settings: every flag's value, checked, frozen once parsing is done."


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
    """A checked command line: the settings, the checkpoint to resume (or None), the device, the picture grids."""
    settings: Settings
    checkpoint: object
    device: object
    grids: dict


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (the full usage of 36 flags would bury the message)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def str2bool(text):
    """Parse True/False/true/false/yes/no/1/0 (the original's type=bool made every string True)."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected True or False (or yes/no, 1/0), got {text!r}")
    return value


def kind(flag):
    """The Python type of a flag's values."""
    return str if flag.default is None else type(flag.default)


def build_parser():
    """The command line from FLAGS: every flag defaults to None here, so that a resumed run knows which were
    given; the help shows each one's real default."""
    p = Parser(prog=safety.PROG, description="PyTorch VAE for MNIST (Kingma & Welling, arXiv 1312.6114)")
    for f in FLAGS:
        parse = {bool: str2bool, int: int, float: float, str: str}[kind(f)]
        shown = "" if f.default is None or "(default" in f.help else f" (default {f.default})"
        p.add_argument(f"--{f.name}", type=parse, default=None, choices=f.choices, help=f.help + shown,
                       metavar={"iw_train": "K", "iw_samples": "K", "kl_warmup": "E", "resume": "PATH"}.get(f.name))
    return p


def rule(f):
    """What values a flag takes, in words."""
    if f.choices:
        return f"one of {', '.join(f.choices)}"
    if f.open_low and f.low == 0:
        return f"positive and at most {f.high:g}"
    return f"from {f.low:g} to {f.high:g}" if kind(f) is float else f"from {f.low} to {f.high}"


def shown(value):
    """A value for a message: a number of more than 15 digits as its number of digits."""
    if isinstance(value, int) and not isinstance(value, bool) and len(str(abs(value))) > 15:
        return f"a number of {len(str(abs(value)))} digits"
    return f"{value:g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


def problem(f, value):
    """Why value is not one f takes (None when it is): its type, its range, its choices, a finite number."""
    want = kind(f)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            return f"must be {rule(f)} (got {shown(value)})"
    if not isinstance(value, want) or (isinstance(value, bool) and want is not bool):
        return f"must be a{'n' if want is int else ''} {want.__name__} (got {shown(value)})"
    if f.choices and value not in f.choices:
        return f"must be {rule(f)} (got {shown(value)})"
    if f.low is not None:
        inside = f.low < value if f.open_low else f.low <= value
        if not (inside and value <= f.high and (want is int or math.isfinite(value))):
            return f"must be {rule(f)} (got {shown(value)})"
    return None


def parse_args(argv=None):
    """Parse and check the command line: the run's Plan. A bad value is a usage error: one line, exit 2."""
    parser = build_parser()
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        return plan(given)
    except UsageError as e:
        parser.error(str(e))


class UsageError(Exception):
    """A value the run cannot take; the message is the usage error's line."""


def plan(given):
    """The Plan of the flags given (name -> value): every check that can fail before any work, in the order
    that needs no torch for as long as it can."""
    for name, value in given.items():
        why = problem(FLAG[name], value)
        if why:
            raise UsageError(f"--{name} {why}")
    checkpoint = read_checkpoint(given["resume"]) if "resume" in given else None
    values = resumed_values(given, checkpoint) if checkpoint else {**DEFAULTS, **given}
    if values["results_path"] is None:
        values["results_path"] = "results"
    if values["lr_min"] > values["learn_rate"] and "lr_min" not in given:
        values["lr_min"] = values["learn_rate"]
    settings = Settings(**values)
    check_values(settings, checkpoint)
    grids = picture_grids(settings)
    check_pictures(settings, grids)
    missing = hardware.missing_device(settings.device)
    if missing:
        raise UsageError(f"--device {settings.device}: {missing}")
    device = hardware.pick_device(settings.device)
    check_memory(settings, grids, device)
    if settings.precision == "bf16" and device.type == "cpu" and not hardware.cpu_info()[1]:
        safety.say("--precision bf16 on a CPU without AMX: its bf16 products are slower than fp32 on it "
                   "(bf16 pays on a GPU or a CPU with AMX)")
    return Plan(settings, checkpoint, device, grids)


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
    """A resumed run's flags: the model's and the data's from the checkpoint (another value given is a usage
    error), training's from the checkpoint unless given, the rest from the command line. The checkpoint's
    reader has checked each saved value as a flag is checked."""
    saved = checkpoint.args
    values = {**DEFAULTS, "results_path": os.path.dirname(checkpoint.path) or "."}
    for f in FLAGS:
        if f.role != RUN:
            value = checkpoint.model_args.get(f.name, saved.get(f.name, f.default))
            values[f.name] = float(value) if kind(f) is float else value
    for name, value in given.items():
        f = FLAG[name]
        if f.role == MODEL and value != values[name]:
            raise UsageError(f"--{name} {value} differs from the checkpoint's {values[name]}; leave it out or give "
                             f"{values[name]} (it would change {f.fixes})")
        values[name] = value
    if values["num_epochs"] < checkpoint.epoch:
        raise UsageError(f"--num_epochs {values['num_epochs']} is fewer than the {checkpoint.epoch} epochs the "
                         f"checkpoint has finished")
    return values


def check_values(s, checkpoint):
    """Usage errors for values that depend on one another or on the file system."""
    if s.lr_min > s.learn_rate:
        raise UsageError(f"--lr_min must be from 0 to --learn_rate {s.learn_rate:g} (got {s.lr_min:g})")
    if s.iw_gradient == "dreg" and s.iw_train == 1:
        raise UsageError("--iw_gradient dreg needs --iw_train K > 1 (the -ELBO's KL is in closed form: there is no "
                         "sampled log q whose score term DReG removes)")
    if os.path.exists(s.results_path) and not os.path.isdir(s.results_path):
        raise UsageError(f"--results_path {s.results_path} is an existing file, not a folder")


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
    import plot_utils  # numpy and PIL: a fraction of a second, no torch
    if not grid.on:
        return
    side = plot_utils.cell_size(grid.factor)
    if side < 1:
        raise UsageError(f"--{grid.name}_resize_factor {grid.factor:g} makes each image smaller than one pixel")
    if max(grid.n_x, grid.n_y) * side > plot_utils.JPEG_MAX_SIDE:
        raise UsageError(f"--{grid.name} image would be {grid.n_x * side}x{grid.n_y * side} pixels; JPEG allows at "
                         f"most {plot_utils.JPEG_MAX_SIDE} a side")


def training_bytes(dim_z, n_hidden, rows, conditional=False):
    """Memory training takes, about: weights, gradients and Adam's two moments (16 bytes a parameter), plus
    the activations of a batch of rows (at least the 1,000 images of an evaluation batch)."""
    import vae
    return (16 * vae.parameter_count(dim_z, n_hidden, conditional=conditional)
            + 4 * max(rows, 1000) * (8 * n_hidden + 4 * vae.DIM_IMG))


def check_memory(s, grids, device):
    """Usage errors for a model, a batch or a picture larger than the memory there is."""
    import plot_utils
    free = hardware.available_memory(device.type)
    if free is None:
        return
    gb = hardware.gigabytes
    need = training_bytes(s.dim_z, s.n_hidden, s.batch_size * s.iw_train, s.conditional)
    if need > free:
        if training_bytes(s.dim_z, s.n_hidden, 1, s.conditional) > free:
            what = f"the model (--n_hidden {s.n_hidden}, --dim_z {s.dim_z})"
        else:
            what = f"a batch of --batch_size {s.batch_size}" + (
                f" x --iw_train {s.iw_train} samples" if s.iw_train > 1 else "")
        raise UsageError(f"{what} needs about {gb(need)} of memory; {gb(free)} is available")
    for grid in grids.values():
        if grid.on:
            need, side = plot_utils.grid_bytes(grid.n_x, grid.n_y, grid.factor), plot_utils.cell_size(grid.factor)
            if need > free:
                raise UsageError(f"the {grid.name} picture ({grid.n_x * side}x{grid.n_y * side} pixels) needs about "
                                 f"{gb(need)} of memory; {gb(free)} is available")
