"""Every flag of the command line, written once as a field of Settings (its type, default, help, range or choices,
and its kind on a resumed run); the check of a value; and the one rule for how a resumed run treats each kind of
flag, used by the command line, the run's report and the checkpoint's reader alike. No torch here."""
import dataclasses
import math
import types
from typing import NamedTuple

import hardware
import mnist_data
from config import KEEP_PROB_MIN, MAX_WIDTH
from plot_utils import JPEG_MAX_SIDE

# a flag's kind on a resumed run
MODEL = "model"  # fixed by the checkpoint: another value is refused
TRAINING = "training"  # the checkpoint's unless given
RUN = "run"  # the command line's, or its default


class Flag(NamedTuple):
    """One flag: its default and help, its kind on a resumed run, and the values it may take."""
    name: str
    kind: type  # the Python type of its values
    default: object
    help: str
    role: str = RUN
    choices: tuple = None
    low: float = None  # a number's range, both ends included (a float's low end excluded when open_low)
    high: float = None
    open_low: bool = False
    fixes: str = None  # a MODEL flag's meaning, for the refusal of another value on resume
    metavar: str = None


def flag(default, help, role=RUN, **rule):
    """A field of Settings that is a flag: its default, its help, its kind on resume and its rule."""
    return dataclasses.field(default=default, metadata={"help": help, "role": role, **rule})


def grid_size(default, help, low=1):
    """A grid's images along a side: at least low, and at most a JPEG's largest side (a cell is at least a pixel)."""
    return flag(default, help, low=low, high=JPEG_MAX_SIDE)


def resize_factor(name):
    """A grid's resize factor: each 28x28 image's side is int(28 * factor) pixels."""
    return flag(1.0, f"{name} resize factor of each image", low=0.0, open_low=True,
                high=JPEG_MAX_SIDE / mnist_data.IMAGE_SIZE)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The run's settings: every flag's value, checked, frozen once parsing is done."""
    dim_z: int = flag(20, "dimension of the latent vector", MODEL, low=1, high=MAX_WIDTH, fixes="the model")
    results_path: str | None = flag(None, "folder for images, metrics and checkpoint (default results, or the "
                                          "--resume checkpoint's folder)")
    add_noise: bool = flag(False, "train to denoise salt & pepper noise", MODEL, fixes="the data")
    n_hidden: int = flag(500, "hidden units per MLP layer", MODEL, low=1, high=MAX_WIDTH, fixes="the model")
    learn_rate: float = flag(1e-3, "Adam learning rate", TRAINING, low=0.0, open_low=True, high=1e38)
    lr_schedule: str = flag("constant", "constant, or cosine from --learn_rate at the first epoch to --lr_min at "
                                        "the last", TRAINING, choices=("constant", "cosine"))
    lr_min: float = flag(1e-5, "the cosine schedule's rate at the last epoch (lowered to --learn_rate when that is "
                               "lower and --lr_min is not given)", TRAINING, low=0.0, high=1e38)
    kl_warmup: int = flag(0, "the KL term's weight rises linearly from 0 to 1 over the first E epochs", TRAINING,
                          low=0, high=10**6, metavar="E")
    iw_train: int = flag(1, "train on the IWAE bound with K samples per image; 1 is the VAE's -ELBO", TRAINING,
                         low=1, high=10**6, metavar="K")
    iw_gradient: str = flag("iwae", "the encoder's gradient for --iw_train K > 1: iwae (the bound's own) or dreg "
                                    "(doubly reparameterized, Tucker et al. 2018: the same bound and decoder "
                                    "gradient)", TRAINING, choices=("iwae", "dreg"))
    conditional: bool = flag(False, "a conditional VAE (the author's CVAE): the encoder and the decoder also see "
                                    "the digit's one-hot label, so the decoder draws a chosen digit", MODEL,
                             fixes="the model")
    output_bias: str = flag("zero", "the decoder's initial output bias: zero (the original), or the logit of the "
                                    "training pixels' mean (Burda et al.'s code)", MODEL, choices=("zero", "mean"),
                            fixes="the model's start")
    num_epochs: int = flag(20, "total number of epochs, counting resumed ones (on resume: the checkpoint's unless "
                               "given)", TRAINING, low=1, high=10**6)
    batch_size: int = flag(128, "batch size", TRAINING, low=1, high=10**7)
    PRR: bool = flag(True, "plot reproduced (reconstructed) test images")
    PRR_n_img_x: int = grid_size(10, "PRR images along x")
    PRR_n_img_y: int = grid_size(10, "PRR images along y")
    PRR_resize_factor: float = resize_factor("PRR")
    PMLR: bool = flag(False, "plot the learned 2-D manifold (needs --dim_z 2)")
    PMLR_n_img_x: int = grid_size(20, "PMLR images along x")
    PMLR_n_img_y: int = grid_size(20, "PMLR images along y")
    PMLR_resize_factor: float = resize_factor("PMLR")
    PMLR_z_range: float = flag(2.0, "PMLR linear grid spans [-z_range, z_range]", low=0.0, open_low=True,
                               high=1.7e38)
    PMLR_n_samples: int = flag(5000, "test images in the labelled latent map", low=1, high=mnist_data.TEST_SIZE)
    PMLR_grid: str = flag("linear", "PMLR grid: linear over z_range, or at the standard normal's quantiles (the "
                                    "paper's Fig. 4)", choices=("linear", "gaussian"))
    PRS: bool = flag(False, "plot random samples of the generative model (conditional: image i is digit i mod 10)")
    PRS_n_img_x: int = grid_size(10, "PRS images along x")
    PRS_n_img_y: int = grid_size(10, "PRS images along y")
    PRS_resize_factor: float = resize_factor("PRS")
    PARR: bool = flag(False, "plot analogies: each row a test image, then its z decoded as the digits 0 to 9 "
                             "(needs --conditional True)")
    PARR_n_img_y: int = grid_size(10, "PARR rows (test images)")
    PARR_resize_factor: float = resize_factor("PARR")
    PIR: bool = flag(False, "plot interpolations: each row two test images at the ends, and the decoder along the "
                            "line between their encoder means")
    PIR_n_img_x: int = grid_size(10, "PIR decoded images between each row's two test images (both means "
                                     "included; the grid is 2 wider)", low=2)
    PIR_n_img_y: int = grid_size(10, "PIR rows (pairs of test images)")
    PIR_resize_factor: float = resize_factor("PIR")
    data_dir: str = flag("data", "folder holding (or receiving) MNIST/raw")
    binarize: bool = flag(False, "binarized MNIST: training images drawn afresh each batch, the test set "
                                 "binarized once", MODEL, fixes="the data")
    keep_prob: float = flag(0.9, "dropout keep probability in training, 1.0 is no dropout (below 0.001 dropout's "
                                 "scaling overflows)", MODEL, low=KEEP_PROB_MIN, high=1.0,
                            fixes="the model's dropout")
    precision: str = flag("fp32", "training's matrix products in fp32 or bf16 (evaluation is always fp32; a run "
                                  "measures whether bf16 is faster on its device and says when it is not)", TRAINING,
                          choices=("fp32", "bf16"))
    seed: int = flag(1, "random seed", low=-2**63, high=2**64 - 1)
    device: str = flag("auto", "auto: CUDA, then MPS, then CPU", choices=hardware.DEVICES)
    iw_samples: int = flag(0, "after training, the importance-weighted test log-likelihood with K samples (0: off)",
                           low=0, high=10**9, metavar="K")
    resume: str | None = flag(None, "continue from a checkpoint.pt", metavar="PATH")


def kind_of(field):
    """The Python type of a field's values (str for `str | None`)."""
    return str if isinstance(field.type, types.UnionType) else field.type


FLAGS = tuple(Flag(f.name, kind_of(f), f.default, **f.metadata) for f in dataclasses.fields(Settings))
FLAG = {f.name: f for f in FLAGS}
DEFAULTS = {f.name: f.default for f in FLAGS}


def shown(value):
    """A value for a message, exactly as it is: a float by its shortest exact form, a number of more than 15 digits
    as its number of digits."""
    if isinstance(value, int) and not isinstance(value, bool) and len(str(abs(value))) > 15:
        return f"a number of {len(str(abs(value)))} digits"
    return repr(value) if isinstance(value, (float, str)) else str(value)


def rule(f):
    """What values a flag takes, in words."""
    if f.choices:
        return f"one of {', '.join(f.choices)}"
    if f.open_low and f.low == 0:
        return f"positive and at most {shown(f.high)}"
    return f"from {shown(f.low)} to {shown(f.high)}"


def problem(f, value, text=None):
    """Why value is not one f takes (None when it is): its type, its range, its choices, a finite number. text:
    the value as the user typed it, shown in the message (a float's text may say more than the float holds)."""
    got = text if text is not None else shown(value)
    if f.kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            return f"must be {rule(f)} (got {got})"
    if not isinstance(value, f.kind) or (isinstance(value, bool) and f.kind is not bool):
        return f"must be a{'n' if f.kind is int else ''} {f.kind.__name__} (got {got})"
    if f.choices and value not in f.choices:
        return f"must be {rule(f)} (got {got})"
    if f.low is not None:
        inside = f.low < value if f.open_low else f.low <= value
        if not (inside and value <= f.high and (f.kind is int or math.isfinite(value))):
            return f"must be {rule(f)} (got {got})"
    return None


def from_checkpoint(f):
    """Whether a resumed run takes f's value from the checkpoint (a training flag: unless it is given)."""
    return f.role != RUN


def on_resume(given, saved):
    """A resumed run's values and the lines that say which training flags it changes: a model flag keeps the
    checkpoint's value (another value given is a ValueError saying what it would change), a training flag the
    checkpoint's unless given, a run flag the command line's or its default. given: the flags on the command line;
    saved: the checkpoint's (checked by flag); a flag the checkpoint lacks ran with its default."""
    values, notes = {}, []
    for f in FLAGS:
        if not from_checkpoint(f):  # the checkpoint's value is neither used nor read
            values[f.name] = given.get(f.name, f.default)
            continue
        old = saved.get(f.name, f.default)
        old = float(old) if f.kind is float else old
        if f.name not in given:
            values[f.name] = old
            continue
        new = values[f.name] = given[f.name]
        if new != old and f.role == MODEL:
            raise ValueError(f"--{f.name} {new} differs from the checkpoint's {old}; leave it out or give {old} "
                             f"(it would change {f.fixes})")
        if new != old and f.name != "num_epochs":  # a new total is what resuming is for: the run's lines show it
            notes.append(f"--{f.name} is now {new} (the checkpoint's run used {old})")
    return values, notes
