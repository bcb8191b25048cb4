"""Train the MNIST VAE of Kingma & Welling: parse, validate, load, train, evaluate, save."""
import argparse
import contextlib
import csv
import dataclasses
import fnmatch
import io
import json
import math
import os
import shlex
import signal
import sys
import time

import torch
from tqdm import tqdm

import mnist_data
import plot_utils
import vae

try:
    import fcntl
except ImportError:  # not on Windows: runs there go unlocked
    fcntl = None

CHECKPOINT_NAME = "checkpoint.pt"
LOCK_NAME = ".run_main.lock"
# every file a run writes into --results_path; a fresh run moves an earlier run's into previous_run_N/
OUTPUTS = ("checkpoint.pt", "metrics.csv", "loss.png", "evaluation.json", "input*.jpg",
           "PRR_epoch_*.jpg", "PMLR_epoch_*.jpg", "PMLR_map_epoch_*.jpg", "PRS_epoch_*.jpg")
MAX_PRR_IMAGES = 10000
MAX_PMLR_SAMPLES = 10000
# the flags that define the model or the data: a resumed run takes them from its checkpoint
SAVED_FLAGS = {"dim_z": 20, "n_hidden": 500, "keep_prob": vae.KEEP_PROB, "add_noise": False, "binarize": False,
               "output_bias": "zero"}
# training's flags and their defaults: a resumed run keeps the checkpoint's unless one is given; a change is printed
CHANGEABLE_FLAGS = {"learn_rate": 1e-3, "batch_size": 128, "precision": "fp32", "lr_schedule": "constant",
                    "lr_min": 1e-5, "kl_warmup": 0, "iw_train": 1}
SEED_RANGE = (-2**63, 2**64 - 1)  # what torch.manual_seed accepts
METRICS = ("epoch", "train_loss", "train_likelihood", "train_divergence",
           "test_loss", "test_likelihood", "test_divergence", "seconds")
EXIT_SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143}


class RunError(Exception):
    """A run cannot go on: a one-line message for the user, and the exit status."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (the full usage of 30 flags would bury the message)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def str2bool(text):
    """Parse True/False/true/false/yes/no/1/0 (the original's type=bool made every string True)."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected True or False (or yes/no, 1/0), got {text!r}")
    return value


def build_parser():
    """The command line: the original's flags and defaults, plus data, seed, device, evaluation and resume."""
    p = Parser(prog="run_main.py", description="PyTorch VAE for MNIST (Kingma & Welling, arXiv 1312.6114)")
    d = SAVED_FLAGS
    p.add_argument("--dim_z", type=int, default=None, help=f"dimension of the latent vector (default {d['dim_z']})")
    p.add_argument("--results_path", default=None,
                   help="folder for images, metrics and checkpoint (default results, or the --resume checkpoint's)")
    p.add_argument("--add_noise", type=str2bool, default=None, help="train to denoise salt & pepper noise (default False)")
    p.add_argument("--n_hidden", type=int, default=None, help=f"hidden units per MLP layer (default {d['n_hidden']})")
    c = CHANGEABLE_FLAGS
    p.add_argument("--learn_rate", type=float, default=None, help=f"Adam learning rate (default {c['learn_rate']})")
    p.add_argument("--lr_schedule", choices=vae.LR_SCHEDULES, default=None,
                   help="constant, or cosine from --learn_rate at the first epoch to --lr_min at the last "
                        "(default constant)")
    p.add_argument("--lr_min", type=float, default=None,
                   help=f"the cosine schedule's rate at the last epoch (default {c['lr_min']})")
    p.add_argument("--kl_warmup", type=int, default=None, metavar="E",
                   help="the KL term's weight rises linearly from 0 to 1 over the first E epochs (default 0)")
    p.add_argument("--iw_train", type=int, default=None, metavar="K",
                   help="train on the IWAE bound with K samples per image; 1 is the VAE's -ELBO (default 1)")
    p.add_argument("--output_bias", choices=("zero", "mean"), default=None,
                   help="the decoder's initial output bias: zero (the original), or the logit of the training "
                        "pixels' mean (Burda et al.'s code)")
    p.add_argument("--num_epochs", type=int, default=20, help="total number of epochs (counting resumed ones)")
    p.add_argument("--batch_size", type=int, default=None, help=f"batch size (default {c['batch_size']})")
    p.add_argument("--PRR", type=str2bool, default=True, help="plot reproduced (reconstructed) test images")
    p.add_argument("--PRR_n_img_x", type=int, default=10, help="PRR images along x")
    p.add_argument("--PRR_n_img_y", type=int, default=10, help="PRR images along y")
    p.add_argument("--PRR_resize_factor", type=float, default=1.0, help="PRR resize factor of each image")
    p.add_argument("--PMLR", type=str2bool, default=False, help="plot the learned 2-D manifold (needs --dim_z 2)")
    p.add_argument("--PMLR_n_img_x", type=int, default=20, help="PMLR images along x")
    p.add_argument("--PMLR_n_img_y", type=int, default=20, help="PMLR images along y")
    p.add_argument("--PMLR_resize_factor", type=float, default=1.0, help="PMLR resize factor of each image")
    p.add_argument("--PMLR_z_range", type=float, default=2.0, help="PMLR linear grid spans [-z_range, z_range]")
    p.add_argument("--PMLR_n_samples", type=int, default=5000, help="test images in the labelled latent map")
    p.add_argument("--PMLR_grid", choices=("linear", "gaussian"), default="linear",
                   help="PMLR grid: linear over z_range, or at the standard normal's quantiles (the paper's Fig. 4)")
    p.add_argument("--PRS", type=str2bool, default=False, help="plot random samples of the generative model")
    p.add_argument("--PRS_n_img_x", type=int, default=10, help="PRS images along x")
    p.add_argument("--PRS_n_img_y", type=int, default=10, help="PRS images along y")
    p.add_argument("--PRS_resize_factor", type=float, default=1.0, help="PRS resize factor of each image")
    p.add_argument("--data_dir", default="data", help="folder holding (or receiving) MNIST/raw")
    p.add_argument("--binarize", type=str2bool, default=None,
                   help="binarized MNIST: training images drawn afresh each batch, the test set binarized once")
    p.add_argument("--keep_prob", type=float, default=None,
                   help=f"dropout keep probability in training; 1.0 is no dropout (default {d['keep_prob']})")
    p.add_argument("--precision", choices=vae.PRECISIONS, default=None,
                   help="training's matrix products in fp32 or bf16 (evaluation is always fp32; default fp32)")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="auto: CUDA, then MPS, then CPU")
    p.add_argument("--iw_samples", type=int, default=0,
                   help="after training, the importance-weighted test log-likelihood with K samples (0: off)")
    p.add_argument("--resume", default=None, metavar="PATH", help="continue from a checkpoint.pt")
    return p


def check_grid(parser, name, n_x, n_y, resize_factor, max_images=None):
    """Usage errors for one image grid's flags."""
    if n_x < 1 or n_y < 1:
        parser.error(f"--{name}_n_img_x and --{name}_n_img_y must be at least 1 (got {n_x} and {n_y})")
    if not (resize_factor > 0 and math.isfinite(resize_factor)):
        parser.error(f"--{name}_resize_factor must be positive (got {resize_factor})")
    side = plot_utils.cell_size(resize_factor)
    if side < 1:
        parser.error(f"--{name}_resize_factor {resize_factor} makes each image smaller than one pixel")
    if max(n_x, n_y) * side > plot_utils.JPEG_MAX_SIDE:
        parser.error(f"--{name} image would be {n_x * side}x{n_y * side} pixels; JPEG allows at most "
                     f"{plot_utils.JPEG_MAX_SIDE} a side")
    if max_images is not None and n_x * n_y > max_images:
        parser.error(f"the {name} grid holds {n_x * n_y} images; at most {max_images} (the test set)")


def available_memory(device):
    """Bytes the run can still allocate on device (CUDA: free GPU memory; else MemAvailable), or None."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as f:
            return int(next(line for line in f if line.startswith("MemAvailable:")).split()[1]) * 1024
    return None


def model_bytes(dim_z, n_hidden, batch_size):
    """Memory training takes, about: weights, gradients and Adam's two moments, plus a batch's activations."""
    d = vae.DIM_IMG
    params = (d + 1) * n_hidden + (n_hidden + 1) * n_hidden * 2 + (n_hidden + 1) * (2 * dim_z + d) + (dim_z + 1) * n_hidden
    return 16 * params + 4 * max(batch_size, 1000) * (8 * n_hidden + 4 * d)


def gigabytes(n):
    return f"{n / 1e9:.3g} GB"


def check_memory(parser, args, device):
    """Usage errors for a model or a picture larger than the memory there is."""
    free = available_memory(device)
    if free is None:
        return
    need = model_bytes(args.dim_z, args.n_hidden, args.batch_size * args.iw_train)
    if need > free:
        parser.error(f"the model (--n_hidden {args.n_hidden}, --dim_z {args.dim_z}) needs about {gigabytes(need)} "
                     f"of memory; {gigabytes(free)} is available")
    for name in ("PRR", "PMLR", "PRS"):
        if getattr(args, name):
            n_x, n_y, factor = (getattr(args, f"{name}_{k}") for k in ("n_img_x", "n_img_y", "resize_factor"))
            need = plot_utils.grid_bytes(n_x, n_y, factor)
            side = plot_utils.cell_size(factor)
            if need > free:
                parser.error(f"the {name} picture ({n_x * side}x{n_y * side} pixels) needs about {gigabytes(need)} "
                             f"of memory; {gigabytes(free)} is available")


def check_resume(parser, args, checkpoint):
    """Take the model's and the data's flags from the checkpoint; a different value given is a usage error."""
    saved = {**SAVED_FLAGS, **{k: v for k, v in checkpoint["args"].items() if k in SAVED_FLAGS},
             **checkpoint["model_args"]}
    for name in SAVED_FLAGS:
        given = getattr(args, name)
        if given is not None and given != saved[name]:
            parser.error(f"--{name} {given} differs from the checkpoint's {saved[name]}; leave it out or give "
                         f"{saved[name]} (it would change the {'data' if name in ('add_noise', 'binarize') else 'model'})")
        setattr(args, name, saved[name])
    for name, default in CHANGEABLE_FLAGS.items():
        if getattr(args, name) is None:
            setattr(args, name, checkpoint["args"].get(name, default))
    if args.num_epochs < checkpoint["epoch"]:
        parser.error(f"--num_epochs {args.num_epochs} is fewer than the {checkpoint['epoch']} epochs "
                     f"the checkpoint has finished")


def parse_args(argv=None):
    """Parse and validate the command line; returns (args, checkpoint or None). Bad values exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    checkpoint = None
    if args.resume is not None:
        try:
            checkpoint = vae.load_checkpoint(args.resume)
        except ValueError as e:
            parser.error(f"--resume: {e}")
        check_resume(parser, args, checkpoint)
        if args.results_path is None:
            args.results_path = os.path.dirname(args.resume) or "."
    else:
        for name, default in {**SAVED_FLAGS, **CHANGEABLE_FLAGS}.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
        if args.num_epochs < 1:
            parser.error(f"--num_epochs must be at least 1 (got {args.num_epochs})")
    if args.results_path is None:
        args.results_path = "results"
    for name in ("dim_z", "n_hidden", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1 (got {getattr(args, name)})")
    if not 0 < args.keep_prob <= 1:
        parser.error(f"--keep_prob must be in (0, 1] (got {args.keep_prob})")
    if not (args.learn_rate > 0 and math.isfinite(args.learn_rate)):
        parser.error(f"--learn_rate must be positive (got {args.learn_rate})")
    if not 0 <= args.lr_min <= args.learn_rate:
        parser.error(f"--lr_min must be from 0 to --learn_rate {args.learn_rate} (got {args.lr_min})")
    if args.kl_warmup < 0:
        parser.error(f"--kl_warmup must be 0 (off) or a number of epochs (got {args.kl_warmup})")
    if args.iw_train < 1:
        parser.error(f"--iw_train must be at least 1 (got {args.iw_train})")
    if not SEED_RANGE[0] <= args.seed <= SEED_RANGE[1]:
        parser.error(f"--seed must be from -2**63 to 2**64 - 1 (got {args.seed})")
    if args.PRR:
        check_grid(parser, "PRR", args.PRR_n_img_x, args.PRR_n_img_y, args.PRR_resize_factor, MAX_PRR_IMAGES)
    if args.PRS:
        check_grid(parser, "PRS", args.PRS_n_img_x, args.PRS_n_img_y, args.PRS_resize_factor)
    if args.PMLR:
        if args.dim_z != 2:
            parser.error(f"--PMLR True needs --dim_z 2 (got {args.dim_z})")
        check_grid(parser, "PMLR", args.PMLR_n_img_x, args.PMLR_n_img_y, args.PMLR_resize_factor)
        if not 0 < args.PMLR_z_range <= torch.finfo(torch.float32).max / 2:
            parser.error(f"--PMLR_z_range must be positive and at most 1.7e38 (got {args.PMLR_z_range})")
        if not 1 <= args.PMLR_n_samples <= MAX_PMLR_SAMPLES:
            parser.error(f"--PMLR_n_samples must be from 1 to {MAX_PMLR_SAMPLES} (got {args.PMLR_n_samples})")
    if args.iw_samples < 0:
        parser.error(f"--iw_samples must be 0 (off) or a positive number of samples (got {args.iw_samples})")
    if os.path.exists(args.results_path) and not os.path.isdir(args.results_path):
        parser.error(f"--results_path {args.results_path} is an existing file, not a folder")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.device == "mps" and not torch.backends.mps.is_available():
        parser.error("--device mps: no MPS device is available")
    check_memory(parser, args, pick_device(args.device))
    return args, checkpoint


def pick_device(name):
    """auto: CUDA, then MPS, then CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def rng_state(device):
    """The random states a resumed run needs to continue the same stream."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    """Restore rng_state's output (the CUDA part only on CUDA)."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def write_output(path, render):
    """render(file) into memory, then write path through a temporary file and a rename: a reader never sees
    half a file, and a failed write leaves no temporary file and raises RunError naming path and the reason."""
    buffer = io.BytesIO()
    render(buffer)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise RunError(f"cannot write {path}: {(e.strerror or str(e)).lower()}") from None


def render_metrics(history):
    """metrics.csv's renderer: one row per finished epoch."""
    def render(f):
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(METRICS)
        for row in history:
            writer.writerow([row["epoch"]] + [f"{row[k]:.6f}" for k in METRICS[1:-1]] + [f"{row['seconds']:.3f}"])
        f.write(text.getvalue().encode())
    return render


def earlier_outputs(folder):
    """The files of OUTPUTS in folder, sorted."""
    return sorted(name for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name))
                  and any(fnmatch.fnmatchcase(name, pattern) for pattern in OUTPUTS))


def move_earlier_run(folder):
    """Move an earlier run's outputs into folder/previous_run_N (N the next free number), saying so."""
    names = earlier_outputs(folder)
    if not names:
        return
    n = 1
    while os.path.exists(os.path.join(folder, f"previous_run_{n}")):
        n += 1
    target = os.path.join(folder, f"previous_run_{n}")
    os.makedirs(target)
    for name in names:
        os.replace(os.path.join(folder, name), os.path.join(target, name))
    print(f"moved the earlier run's {len(names)} files in {folder} to {target}", flush=True)


@contextlib.contextmanager
def results_folder(args):
    """Create and lock --results_path for this run, remove stale temporary files, and move an earlier run's
    outputs aside unless this run resumes from that folder's checkpoint."""
    folder = args.results_path
    try:
        os.makedirs(folder, exist_ok=True)
        lock = open(os.path.join(folder, LOCK_NAME), "a")
    except OSError as e:
        raise RunError(f"cannot use --results_path {folder}: {(e.strerror or str(e)).lower()}") from None
    with lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise RunError(f"another run is writing to {folder}; wait for it to end or choose another "
                               f"--results_path") from None
        try:
            for name in os.listdir(folder):
                if name.endswith(".tmp") and any(fnmatch.fnmatchcase(name[:-4], p) for p in OUTPUTS):
                    os.remove(os.path.join(folder, name))
            resuming_here = args.resume is not None and os.path.samefile(os.path.dirname(args.resume) or ".", folder)
            if not resuming_here:
                move_earlier_run(folder)
        except OSError as e:
            raise RunError(f"cannot tidy --results_path {folder}: {(e.strerror or str(e)).lower()}") from None
        yield folder


def load_data(args, device):
    """MNIST on device and the test inputs the model sees (noisy once, from a generator of --seed, with
    --add_noise); checks that the pictures have their test images."""
    data = mnist_data.load_mnist(args.data_dir, device, args.binarize)
    if mnist_data.num_batches(len(data.train_x), args.batch_size) == 0:
        raise RunError(f"--batch_size {args.batch_size} is larger than the {len(data.train_x)} training images", 2)
    n_prr = args.PRR_n_img_x * args.PRR_n_img_y if args.PRR else 0
    n_pmlr = args.PMLR_n_samples if args.PMLR else 0
    if max(n_prr, n_pmlr) > len(data.test_x):
        raise RunError(f"the plots need {max(n_prr, n_pmlr)} test images; {args.data_dir} has {len(data.test_x)}", 2)
    x_test_hat = data.test_x
    if args.add_noise:
        x_test_hat = mnist_data.salt_and_pepper(data.test_x, torch.Generator(device=device).manual_seed(args.seed))
    return data, x_test_hat


@dataclasses.dataclass
class Run:
    """The state training carries from epoch to epoch."""
    model: vae.VAE
    optimizer: torch.optim.Optimizer
    epoch: int = 0  # the next epoch to train
    best_loss: float = math.inf
    history: list = dataclasses.field(default_factory=list)
    saved: str = None  # the newest checkpoint a user could resume from


def build_run(args, checkpoint, data, device):
    """The model and Adam, new (seeded by --seed) or from the checkpoint with its random states."""
    torch.manual_seed(args.seed)
    if checkpoint is None:
        model = vae.VAE(args.dim_z, args.n_hidden, args.keep_prob).to(device)
        if args.output_bias == "mean":
            model.init_output_bias(data.train_x.mean(0))
        return Run(model, vae.adam(model, args.learn_rate))
    try:
        model = vae.from_checkpoint(checkpoint).to(device)
        optimizer = vae.adam(model, args.learn_rate)
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (ValueError, KeyError, TypeError) as e:
        raise RunError(f"--resume: {args.resume}: {e}", 2) from None
    set_rng_state(checkpoint["rng"], device)
    print(f"resumed from {args.resume} after {checkpoint['epoch']} epochs", flush=True)
    before = checkpoint["args"]
    for name in CHANGEABLE_FLAGS:
        if name in before and before[name] != getattr(args, name):
            print(f"--{name} is now {getattr(args, name)} (the checkpoint's run used {before[name]})", flush=True)
    if args.lr_schedule == "cosine" and before.get("num_epochs", args.num_epochs) != args.num_epochs:
        epoch, planned = checkpoint["epoch"], before["num_epochs"]
        was = vae.learning_rate(epoch, planned, before.get("learn_rate", args.learn_rate),
                                before.get("lr_min", args.lr_min), before.get("lr_schedule", "constant"))
        print(f"the cosine schedule now runs over {args.num_epochs} epochs (the checkpoint's run planned {planned}): "
              f"epoch {epoch} trains at {learning_rate(args, epoch):.3g} where it would have at {was:.3g}", flush=True)
    return Run(model, optimizer, checkpoint["epoch"], checkpoint["best_loss"], checkpoint["history"], args.resume)


class Pictures:
    """The pictures' fixed inputs (test images, manifold grid, prior samples) and their drawing."""

    def __init__(self, args, data, x_test_hat, folder):
        self.args, self.folder, device = args, folder, data.test_x.device
        n_prr = args.PRR_n_img_x * args.PRR_n_img_y if args.PRR else 0
        self.x_prr, self.x_prr_hat = data.test_x[:n_prr], x_test_hat[:n_prr]
        self.x_pmlr_hat, self.y_pmlr = x_test_hat[:args.PMLR_n_samples], data.test_y[:args.PMLR_n_samples]
        z_grid = plot_utils.manifold_z(args.PMLR_n_img_x, args.PMLR_n_img_y, args.PMLR_z_range, args.PMLR_grid)
        self.z_grid, self.limit = torch.from_numpy(z_grid).to(device), plot_utils.scatter_limit(z_grid)
        # the same prior samples every epoch, from their own generator: training's stream is untouched
        n_prs = args.PRS_n_img_x * args.PRS_n_img_y if args.PRS else 0
        self.z_prs = torch.randn(n_prs, args.dim_z, generator=torch.Generator().manual_seed(args.seed)).to(device)

    def grid(self, name, file_name, images, stretch=False):
        """Write one grid of the name's (PRR, PMLR or PRS) size."""
        a = self.args
        n_x, n_y, factor = getattr(a, f"{name}_n_img_x"), getattr(a, f"{name}_n_img_y"), getattr(a, f"{name}_resize_factor")
        write_output(os.path.join(self.folder, file_name),
                     lambda f: plot_utils.save_grid(f, images.cpu(), n_x, n_y, factor, stretch))

    def save_inputs(self):
        """input.jpg, and input_noise.jpg (stretched min..max to 0..255, as the original drew it)."""
        if self.args.PRR:
            self.grid("PRR", "input.jpg", self.x_prr)
            if self.args.add_noise:
                self.grid("PRR", "input_noise.jpg", self.x_prr_hat, stretch=True)

    def save(self, model, epoch):
        """The epoch's PRR, PMLR and PRS pictures; their sampling leaves training's random stream alone."""
        a, device = self.args, self.z_grid.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if a.PRR:
                self.grid("PRR", f"PRR_epoch_{epoch:02d}.jpg", model.reconstruct(self.x_prr_hat))
            if a.PMLR:
                self.grid("PMLR", f"PMLR_epoch_{epoch:02d}.jpg", model.decode(self.z_grid))
                z = model.encode(self.x_pmlr_hat)[0].cpu()
                write_output(os.path.join(self.folder, f"PMLR_map_epoch_{epoch:02d}.jpg"),
                             lambda f: plot_utils.save_scatter(f, z, self.y_pmlr.cpu(), self.limit))
            if a.PRS:
                self.grid("PRS", f"PRS_epoch_{epoch:02d}.jpg", model.decode(self.z_prs))


class Signals:
    """SIGINT and SIGTERM set `received` instead of killing the run, which stops between batches."""

    def __enter__(self):
        self.received = None
        self.previous = {s: signal.signal(s, self.handle) for s in EXIT_SIGNALS}
        return self

    def handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def check(self, message):
        """Raise RunError(message) with the signal's exit status if one was received."""
        if self.received is not None:
            raise RunError(message, EXIT_SIGNALS[self.received])


def resume_command(script, argv, checkpoint_path):
    """The command line that continues this run from its checkpoint."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            kept.append(arg)
    return shlex.join(["python", script, *kept, "--resume", checkpoint_path])


def save_epoch(args, run, pictures, train, test, epoch, seconds):
    """metrics.csv, loss.png, the pictures after a new best training loss or the last epoch, checkpoint.pt."""
    out = lambda name: os.path.join(args.results_path, name)  # noqa: E731
    run.history.append({"epoch": epoch, **{f"train_{k}": v for k, v in train._asdict().items()},
                        **{f"test_{k}": v for k, v in test._asdict().items()}, "seconds": seconds})
    write_output(out("metrics.csv"), render_metrics(run.history))
    write_output(out("loss.png"), lambda f: plot_utils.save_loss_curve(
        f, [r["epoch"] for r in run.history], [r["train_loss"] for r in run.history],
        [r["test_loss"] for r in run.history]))
    if train.loss < run.best_loss or epoch + 1 == args.num_epochs:
        run.best_loss = min(run.best_loss, train.loss)
        pictures.save(run.model, epoch)
    run.epoch = epoch + 1
    write_output(out(CHECKPOINT_NAME), lambda f: vae.save_checkpoint(
        f, run.model, run.optimizer, epoch=run.epoch, best_loss=run.best_loss, history=run.history,
        args=dict(vars(args)), rng=rng_state(next(run.model.parameters()).device)))
    run.saved = out(CHECKPOINT_NAME)


def learning_rate(args, epoch):
    """Adam's rate in an epoch under the run's schedule."""
    return vae.learning_rate(epoch, args.num_epochs, args.learn_rate, args.lr_min, args.lr_schedule)


def train(args, run, data, x_test_hat, pictures, signals, continue_with):
    """Train from run.epoch to --num_epochs, evaluating on the test set and saving after each epoch."""
    show_bar = sys.stderr.isatty()
    steps = mnist_data.num_batches(len(data.train_x), args.batch_size)
    for epoch in range(run.epoch, args.num_epochs):
        t0 = time.perf_counter()
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(args, epoch)
        with tqdm(total=steps, desc=f"epoch {epoch}", leave=False, disable=not show_bar) as bar:
            def show_step(loss):
                bar.set_postfix(loss=f"{loss.item():.2f}", refresh=False)
                bar.update()
            batches = mnist_data.batches(data.train_x, args.batch_size, args.add_noise, args.binarize)
            train_metrics = vae.train_epoch(run.model, run.optimizer, batches, args.precision, args.iw_train,
                                            vae.kl_weights(epoch, steps, args.kl_warmup),
                                            should_stop=lambda: signals.received is not None,
                                            on_step=show_step if show_bar else None)
        if train_metrics is None:
            signals.check(f"interrupted in epoch {epoch}; " + (
                f"the checkpoint of the {epoch} finished epochs is {run.saved}; continue with: "
                f"{continue_with(run.saved)}" if run.saved else "no epoch had finished; nothing to resume"))
        if not all(map(math.isfinite, train_metrics)):
            kept = f"the last good checkpoint is {run.saved}" if run.saved else "no epoch finished"
            raise RunError(f"non-finite loss in epoch {epoch} (try a smaller --learn_rate); {kept}")
        test_metrics = vae.evaluate(run.model, x_test_hat, data.test_x)
        seconds = time.perf_counter() - t0
        # K > 1: the training bound -L_K first, then the -ELBO's two terms of the same samples
        label = "L_tot" if args.iw_train == 1 else f"-L_{args.iw_train}"
        print(f"epoch {epoch}: {label} %03.2f L_likelihood %03.2f L_divergence %03.2f" % tuple(train_metrics)
              + " | test L_tot %.2f L_likelihood %.2f L_divergence %.2f" % tuple(test_metrics)
              + (f" | lr {learning_rate(args, epoch):.2e}" if args.lr_schedule != "constant" else "")
              + " | %.1f s" % seconds, flush=True)
        save_epoch(args, run, pictures, train_metrics, test_metrics, epoch, seconds)
    signals.check(f"interrupted; all {args.num_epochs} epochs finished and {run.saved} holds them")


def final_evaluation(args, run, data, x_test_hat, signals):
    """The importance-weighted likelihood bound and the denoising error, printed and in evaluation.json."""
    evaluation = {"epochs": args.num_epochs, "test_images": len(data.test_x)}
    if args.iw_samples:
        t0 = time.perf_counter()
        with tqdm(total=len(data.test_x), desc=f"test log p(x), K={args.iw_samples}", leave=False,
                  disable=not sys.stderr.isatty()) as bar:
            def step(n):
                signals.check(f"interrupted in the final evaluation; {run.saved} holds all {args.num_epochs} epochs")
                bar.update(n)
            log_px = vae.mean_log_likelihood(run.model, x_test_hat, data.test_x, args.iw_samples, on_batch=step)
        print("test log p(x) >= -%.2f nats (K=%d, %.1f s)" % (-log_px, args.iw_samples, time.perf_counter() - t0),
              flush=True)
        evaluation.update(K=args.iw_samples, test_log_likelihood=log_px)
    if args.add_noise:
        noisy, restored = vae.mean_abs_error(run.model, x_test_hat, data.test_x)
        print("denoising: mean absolute error to the clean test images: noisy %.4f, restored %.4f"
              % (noisy, restored), flush=True)
        evaluation.update(mae_noisy=noisy, mae_restored=restored)
    if args.iw_samples or args.add_noise:
        write_output(os.path.join(args.results_path, "evaluation.json"),
                     lambda f: f.write(json.dumps(evaluation, indent=2).encode()))


def main(argv=None, script="run_main.py"):
    """Parse and validate, load, build or resume, train, evaluate; a failure is one line and an exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, checkpoint = parse_args(argv)
    device = pick_device(args.device)
    try:
        with results_folder(args) as folder, Signals() as signals:
            data, x_test_hat = load_data(args, device)
            run = build_run(args, checkpoint, data, device)
            pictures = Pictures(args, data, x_test_hat, folder)
            pictures.save_inputs()
            train(args, run, data, x_test_hat, pictures, signals,
                  continue_with=lambda saved: resume_command(script, argv, saved))
            if checkpoint is not None and checkpoint["epoch"] == args.num_epochs:
                pictures.save(run.model, run.epoch - 1)  # nothing was left to train: draw the resumed model
            final_evaluation(args, run, data, x_test_hat, signals)
    except RunError as e:  # interrupted, non-finite loss, a failed write, a busy folder, a bad batch size
        fail(str(e), e.status)
    except mnist_data.MNISTError as e:  # missing or damaged data
        fail(str(e), 1)
    except MemoryError:
        fail("out of memory (try a smaller --n_hidden, --batch_size or picture)", 1)


def fail(message, status):
    """Stop with a one-line error and the exit status."""
    print(f"run_main.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


if __name__ == "__main__":
    try:
        main(script=sys.argv[0])
    except KeyboardInterrupt:  # a Ctrl-C before training's handler is in place
        fail("interrupted", 130)
    except BrokenPipeError:  # the reader of our output went away (| head): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
