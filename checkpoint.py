"""checkpoint.pt, the one owner of its format: write it; read it and check every field a run uses and every byte
(vae.from_checkpoint and training.restore build the model, Adam and the random state from what it read).

Nothing in a file is used as it came: each tensor must have its exact shape and dtype and hold all its own
elements, and the run gets this module's own contiguous copy (never a tensor shared between two fields); a
random state is proven by loading it into a scratch generator; numbers must be finite.
"""
import hashlib
import io
import math
import os
import warnings
import zipfile
from typing import NamedTuple

import torch

import flags
import hardware
from config import VAEConfig
from report import reason, what_is

FORMAT = "pytorch-mnist-vae checkpoint 1"
KEYS = ("format", "model_args", "model", "optimizer", "epoch", "best_loss", "history", "args", "rng")
# the figures of each finished epoch, in the history as in metrics.csv
METRICS = ("epoch", "train_loss", "train_nll", "train_divergence", "test_loss", "test_nll", "test_divergence",
           "seconds")
# the history's names before the nll columns were called so (the same figures)
RENAMED_METRICS = {"train_likelihood": "train_nll", "test_likelihood": "test_nll"}
PLAIN = (bool, int, float, str, type(None))  # the kinds of value a saved flag may have


class Checkpoint(NamedTuple):
    """A checked checkpoint: every field copied into a form this code owns."""
    path: str
    digest: str  # sha256 of the file's bytes: whether it is still the file that was read
    config: VAEConfig  # the model's, from model_args
    weights: dict  # name -> contiguous float32 tensor of the model's shape
    adam: list  # per parameter, in the model's order: {"step", "exp_avg", "exp_avg_sq"}
    epoch: int  # epochs finished
    best_loss: float
    history: list  # one dict of METRICS per finished epoch
    args: dict  # the run's flags, plain values (the command line checks the ones it uses)
    rng: dict  # "cpu" (and "cuda" if saved): proven generator states


def save(file, model, optimizer, **run):
    """Write the model, its arguments, the optimizer and the run's state (epoch, history, ...) to a file."""
    torch.save({"format": FORMAT, "model_args": model.config.as_saved(), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), **run}, file)


def digest_of(data):
    """The sha256 of a file's bytes."""
    return hashlib.sha256(data).hexdigest()


def bad_record(data):
    """The name of the first record of a checkpoint's zip whose bytes fail their CRC (None when all pass, or when
    the bytes are not a zip: torch.load names that)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return z.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError):
        return None
    except Exception:  # a damaged header can raise anything while it is decompressed
        return "header"




def read(path):
    """Read and check a checkpoint of this project (tensors and plain data only, never code); ValueError saying
    what is wrong. Builds no model: the weights and Adam's moments are checked against the shapes the file's
    VAEConfig gives."""
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder; give the checkpoint file in it ({os.path.join(path, 'checkpoint.pt')})")
    if not os.path.lexists(path):
        raise ValueError(f"no such file: {path}")
    if not os.path.isfile(path):
        raise ValueError(f"{path} is {what_is(path)}, not a checkpoint file")
    try:
        hardware.check_memory(os.path.getsize(path), f"reading {path}")
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {reason(e)}") from None
    except MemoryError:
        raise ValueError(f"{path} is too large to read into the memory there is") from None
    damaged_record = bad_record(data)
    if damaged_record:
        raise ValueError(f"{path} is corrupt: its record {damaged_record} fails its checksum")
    try:
        with warnings.catch_warnings():  # torch's remarks on what a file holds: the checks below speak for it
            warnings.simplefilter("ignore")
            raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except MemoryError:
        raise ValueError(f"{path} is too large to read into the memory there is") from None
    except Exception as e:  # truncated, garbage, or an unsafe pickle: all one message
        raise ValueError(f"{path} is corrupt or not a PyTorch file ({type(e).__name__})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint of this VAE")
    missing = [key for key in KEYS if key not in raw]
    if missing:
        raise ValueError(f"{path} is an incomplete checkpoint (no {', '.join(missing)})")
    kinds = {"model_args": dict, "model": dict, "optimizer": dict, "epoch": int, "best_loss": (int, float),
             "history": list, "args": dict, "rng": dict}
    wrong = [key for key, kind in kinds.items() if not isinstance(raw[key], kind) or isinstance(raw[key], bool)]
    if wrong:
        raise ValueError(f"{path} is a damaged checkpoint (bad {', '.join(wrong)})")

    def damaged(what):
        return ValueError(f"{path} is a damaged checkpoint (bad {what})")
    if not 1 <= raw["epoch"] <= 10**9:
        raise damaged("epoch")
    if not finite(raw["best_loss"]):
        raise damaged("best_loss")
    try:
        config = VAEConfig.from_saved(raw["model_args"])
    except ValueError:
        raise ValueError(f"{path} has invalid model arguments {raw['model_args']!r}") from None
    expected = config.shapes()
    weights = {name: owned(raw["model"].get(name), shape) for name, shape in expected.items()}
    if None in weights.values() or set(raw["model"]) != set(expected):
        wrong = [n for n, w in weights.items() if w is None] or sorted(set(raw["model"]) ^ set(expected))
        raise ValueError(f"the checkpoint's weights do not fit its model arguments {config.as_saved()} "
                         f"({len(wrong)} tensors differ, the first {wrong[0]})")
    if not all(bool(torch.isfinite(w).all()) for w in weights.values()):
        raise damaged("weights: not finite")
    return Checkpoint(path, digest_of(data), config, weights, check_adam(raw["optimizer"], expected),
                      raw["epoch"], float(raw["best_loss"]), check_history(raw["history"], raw["epoch"], damaged),
                      check_args(raw["args"], damaged), check_rng(raw["rng"], damaged))


def finite(value):
    """Whether value is a finite number (an int too large for a float is not)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def unchanged(checkpoint):
    """Whether the file is still the one that was read (another run may have written it since)."""
    try:
        with open(checkpoint.path, "rb") as f:
            return digest_of(f.read()) == checkpoint.digest
    except OSError:
        return False


def owned(t, shape, dtype=torch.float32):
    """This code's own contiguous copy of t, or None unless t is a dense CPU tensor of exactly this shape and
    dtype whose storage holds exactly its elements (no stride-0 expansion, no view into something larger)."""
    if not (isinstance(t, torch.Tensor) and type(t) is torch.Tensor and t.layout == torch.strided
            and t.device.type == "cpu" and t.dtype == dtype and tuple(t.shape) == tuple(shape)
            and t.untyped_storage().nbytes() == t.numel() * t.element_size()):
        return None
    copy = torch.empty(shape, dtype=dtype)
    copy.copy_(t)
    return copy


def check_adam(state, expected):
    """Adam's state, one entry per parameter in the model's order: the exact shape, finite moments, a second
    moment never negative, a finite step of at least 1. Fused Adam trusts the moments' memory, so it only
    ever sees these copies; the hyperparameters are this code's own, never the file's."""
    saved = state.get("state")
    if not isinstance(saved, dict) or set(saved) != set(range(len(expected))):
        raise ValueError("the checkpoint's optimizer state does not fit its model")
    adam = []
    for i, shape in enumerate(expected.values()):
        entry = saved[i]
        ok = isinstance(entry, dict) and set(entry) == {"step", "exp_avg", "exp_avg_sq"}
        moments = {k: owned(entry[k], shape) for k in ("exp_avg", "exp_avg_sq")} if ok else {}
        step = owned(entry["step"], ()) if ok else None
        if not (ok and None not in moments.values() and step is not None
                and all(bool(torch.isfinite(m).all()) for m in moments.values())
                and bool((moments["exp_avg_sq"] >= 0).all())
                and math.isfinite(step.item()) and 1 <= step.item() <= 2**24):
            raise ValueError(f"the checkpoint's optimizer state does not fit its model (parameter {i})")
        adam.append({"step": step, **moments})
    return adam


def check_history(history, epochs, damaged):
    """One row per finished epoch, numbered from 0, every figure a finite number; older column names renamed."""
    rows = []
    for i, row in enumerate(history):
        if not isinstance(row, dict):
            raise damaged("history")
        row = {RENAMED_METRICS.get(k, k): v for k, v in row.items()}
        if not (row.get("epoch") == i and not isinstance(row["epoch"], bool) and all(
                isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool)
                and finite(row[k]) for k in METRICS) and row["seconds"] >= 0):
            raise damaged("history")
        rows.append({"epoch": i, **{k: float(row[k]) for k in METRICS[1:]}})
    if len(rows) != epochs:
        raise damaged("history")
    return rows


def check_args(args, damaged):
    """The saved flags, copied: names to plain values, and each flag a resumed run takes from them (the model's,
    the data's and training's, the planned epochs among them) with its flag's type, range and choices."""
    if not all(isinstance(k, str) and isinstance(v, PLAIN) for k, v in args.items()):
        raise damaged("args")
    for f in flags.FLAGS:
        if f.name in args and flags.from_checkpoint(f) and flags.problem(f, args[f.name]):
            raise damaged(f"args {f.name}: {flags.problem(f, args[f.name])}")
    return dict(args)


def check_rng(rng, damaged):
    """The random states, each proven by loading it into a scratch generator."""
    cpu = owned(rng.get("cpu"), tuple(torch.get_rng_state().shape), torch.uint8)
    if cpu is None or not loads(torch.Generator(), cpu):
        raise damaged("rng")
    states = {"cpu": cpu}
    if "cuda" in rng:
        cuda = rng["cuda"]
        cuda = owned(cuda, tuple(cuda.shape), torch.uint8) if isinstance(cuda, torch.Tensor) and cuda.dim() == 1 \
            else None
        if cuda is None or (torch.cuda.is_available() and not loads(torch.Generator(device="cuda"), cuda)):
            raise damaged("rng")
        states["cuda"] = cuda
    return states


def loads(generator, state):
    """Whether a generator accepts the state."""
    try:
        generator.set_state(state)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def rng_state(device):
    """The random states a resumed run needs to continue the same stream."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state
