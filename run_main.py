"""Train the MNIST VAE of Kingma & Welling: parse, validate, load, train, evaluate, save.

Glossary
  x       an image, 784 pixel values in [0, 1]; x_hat  what the encoder sees: x, or x with the original's
          salt-and-pepper noise (--add_noise), which the model learns to remove
  PRR     "plot reproduced results": a grid of test images' reconstructions
  PMLR    "plot manifold learning results": the decoder over a grid of 2-D z, and where the test images lie
  PRS     "plot random samples": decodes of z drawn from the prior N(0, I)
  -ELBO   training's loss: L_likelihood, the nll -log p(x|z), plus L_divergence, KL(q(z|x) || p(z))
  likelihood  always a log-likelihood, log p (a negative number of nats); its negation is called nll:
          metrics.csv's *_loss = *_nll + *_divergence, evaluation.json's test_log_likelihood = log p(x).
          Only the printed L_likelihood keeps the original's label for the nll.
"""
import os
import signal
import sys

# the signals that stop a run, and its exit status for each
EXIT_SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143}
if hasattr(signal, "SIGHUP"):  # a closed terminal or a dropped ssh session
    EXIT_SIGNALS[signal.SIGHUP] = 129


def exit_at_once(signum, frame):
    """A signal while the libraries import: one line and the signal's exit status (nothing is written yet)."""
    os.write(2, b"run_main.py: error: interrupted\n")
    os._exit(EXIT_SIGNALS[signum])


if __name__ == "__main__":  # torch and matplotlib take seconds to import: a Ctrl-C then is one line too
    for _s in EXIT_SIGNALS:
        signal.signal(_s, exit_at_once)

import argparse
import contextlib
import csv
import dataclasses
import errno
import io
import json
import math
import re
import shlex
import time
from typing import NamedTuple

import torch
from tqdm import tqdm

import mnist_data
import plot_utils
import vae

try:
    import fcntl
except ImportError:  # not on Windows: runs there go unlocked
    fcntl = None

# the flags that define the model or the data: a resumed run takes them from its checkpoint
SAVED_FLAGS = {"dim_z": 20, "n_hidden": 500, "keep_prob": vae.KEEP_PROB, "add_noise": False, "binarize": False,
               "output_bias": "zero"}
# training's flags: a resumed run keeps the checkpoint's unless one is given; a change is printed
CHANGEABLE_FLAGS = {"learn_rate": 1e-3, "batch_size": 128, "precision": "fp32", "lr_schedule": "constant",
                    "lr_min": 1e-5, "kl_warmup": 0, "iw_train": 1, "iw_gradient": "iwae"}
OUTPUT_BIASES = ("zero", "mean")
SEED_RANGE = (-2**63, 2**64 - 1)  # what torch.manual_seed accepts
METRICS = ("epoch", "train_loss", "train_nll", "train_divergence", "test_loss", "test_nll", "test_divergence",
           "seconds")
# metrics.csv's and the history's names before the nll columns were called so (the same figures)
RENAMED_METRICS = {"train_likelihood": "train_nll", "test_likelihood": "test_nll"}
LONG_EVALUATION_S = 10  # an importance-weighted evaluation longer than this announces its time


def main(argv=None, script="run_main.py"):
    """Parse and validate, load, build or resume, train, evaluate; a failure is one line and an exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with SIGNALS.caught():  # from here a signal stops the run at the next safe point, never mid-write
        plan = parse_args(argv)
        args, run, folder = plan.args, None, None
        try:
            data = load_data(plan)  # every check that can fail runs before the folder is touched
            run = build_run(plan, data)
            SIGNALS.check(phase=STARTING)
            with results_folder(args.results_path, args.resume) as folder:
                pictures = Pictures(plan, data, folder)
                pictures.save_inputs()
                train(args, run, data, pictures)
                if run.start == args.num_epochs:
                    pictures.save(run.model, run.epoch - 1)  # nothing was left to train: draw the resumed model
                final_evaluation(args, run, data, folder)
        except Interrupted as e:
            saved = saved_checkpoint(run, folder, args.resume)
            fail(interrupted_message(e, run, saved, resume_command(script, argv, saved) if saved else None),
                 EXIT_SIGNALS[e.signum])
        except NonFinite as e:
            saved = saved_checkpoint(run, folder, args.resume)
            kept = f"the last good checkpoint is {saved}" if saved else "no epoch finished"
            fail(f"non-finite {e.what} in {e.phase} (try a smaller --learn_rate); {kept}", 1)
        except RunError as e:  # a failed write, a busy folder, a bad batch size or checkpoint
            fail(str(e), e.status)
        except mnist_data.MNISTError as e:  # missing or damaged data
            fail(str(e), 1)
        except MemoryError:
            fail("out of memory (try a smaller --n_hidden, --batch_size or picture)", 1)


# ---- the command line

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
    d, c = SAVED_FLAGS, CHANGEABLE_FLAGS
    p.add_argument("--dim_z", type=int, default=None, help=f"dimension of the latent vector (default {d['dim_z']})")
    p.add_argument("--results_path", default=None,
                   help="folder for images, metrics and checkpoint (default results, or the --resume checkpoint's)")
    p.add_argument("--add_noise", type=str2bool, default=None,
                   help="train to denoise salt & pepper noise (default False)")
    p.add_argument("--n_hidden", type=int, default=None, help=f"hidden units per MLP layer (default {d['n_hidden']})")
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
    p.add_argument("--iw_gradient", choices=vae.IW_GRADIENTS, default=None,
                   help="the encoder's gradient for --iw_train K > 1: iwae (the bound's own) or dreg (doubly "
                        "reparameterized, Tucker et al. 2018; the same bound and decoder gradient) (default iwae)")
    p.add_argument("--output_bias", choices=OUTPUT_BIASES, default=None,
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
                   help=f"dropout keep probability in training, from {vae.KEEP_PROB_MIN} to 1.0 (no dropout; "
                        f"default {d['keep_prob']})")
    p.add_argument("--precision", choices=vae.PRECISIONS, default=None,
                   help="training's matrix products in fp32 or bf16 (evaluation is always fp32; default fp32; "
                        "bf16 pays on a GPU or a CPU with AMX, not elsewhere)")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="auto: CUDA, then MPS, then CPU")
    p.add_argument("--iw_samples", type=int, default=0,
                   help="after training, the importance-weighted test log-likelihood with K samples (0: off)")
    p.add_argument("--resume", default=None, metavar="PATH", help="continue from a checkpoint.pt")
    return p


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


def picture_grids(args):
    """The three grids, PRR, PMLR and PRS, from their flags."""
    return {"PRR": Grid("PRR", args.PRR, args.PRR_n_img_x, args.PRR_n_img_y, args.PRR_resize_factor),
            "PMLR": Grid("PMLR", args.PMLR, args.PMLR_n_img_x, args.PMLR_n_img_y, args.PMLR_resize_factor),
            "PRS": Grid("PRS", args.PRS, args.PRS_n_img_x, args.PRS_n_img_y, args.PRS_resize_factor)}


class Plan(NamedTuple):
    """A validated command line: the flags, the checkpoint to resume (or None), the device, the picture grids."""
    args: argparse.Namespace
    checkpoint: dict
    device: torch.device
    grids: dict


def parse_args(argv=None):
    """Parse, then validate the command line: the run's Plan. Bad values exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return validate(parser, args)


# ---- training, evaluation and saving

@dataclasses.dataclass
class Run:
    """The state training carries from epoch to epoch."""
    model: vae.VAE
    optimizer: torch.optim.Optimizer
    epoch: int = 0  # the next epoch to train
    best_loss: float = math.inf
    history: list = dataclasses.field(default_factory=list)
    start: int = 0  # the epoch this process started from


class TestSet(NamedTuple):
    """The test images: clean (x), as the model sees them (x_hat: noisy with --add_noise), and their labels."""
    x: torch.Tensor
    x_hat: torch.Tensor
    y: torch.Tensor


class Data(NamedTuple):
    """What a run trains and evaluates on, on the training device."""
    train_x: torch.Tensor
    test: TestSet


def load_data(plan):
    """MNIST on the device, the test inputs made noisy once (from a generator of --seed) with --add_noise;
    checks the batch size and that the pictures have their test images."""
    args, device = plan.args, plan.device
    mnist = mnist_data.load_mnist(args.data_dir, device, args.binarize)
    if mnist_data.num_batches(len(mnist.train_x), args.batch_size) == 0:
        raise RunError(f"--batch_size {args.batch_size} is larger than the {len(mnist.train_x)} training images", 2)
    needed = max(plan.grids["PRR"].count, args.PMLR_n_samples if args.PMLR else 0)
    if needed > len(mnist.test_x):
        raise RunError(f"the plots need {needed} test images; {args.data_dir} has {len(mnist.test_x)}", 2)
    x_hat = mnist.test_x
    if args.add_noise:
        x_hat = mnist_data.salt_and_pepper(mnist.test_x, torch.Generator(device=device).manual_seed(args.seed))
    return Data(mnist.train_x, TestSet(mnist.test_x, x_hat, mnist.test_y))


def build_run(plan, data):
    """The model and Adam, new (seeded by --seed) or from the checkpoint with its random states."""
    args, checkpoint, device = plan.args, plan.checkpoint, plan.device
    torch.manual_seed(args.seed)
    if checkpoint is None:
        model = vae.VAE(args.dim_z, args.n_hidden, args.keep_prob).to(device)
        if args.output_bias == "mean":
            model.init_output_bias(data.train_x.mean(0))
        return Run(model, vae.adam(model, args.learn_rate))
    try:
        model = vae.from_checkpoint(checkpoint).to(device)
        optimizer = vae.restore_adam(model, args.learn_rate, checkpoint["optimizer"])
    except ValueError as e:
        raise RunError(f"--resume: {args.resume}: {e}", 2) from None
    set_rng_state(checkpoint["rng"], device)
    say(f"resumed from {args.resume} after {checkpoint['epoch']} epochs")
    before = checkpoint["args"]
    for name in CHANGEABLE_FLAGS:
        if name in before and before[name] != getattr(args, name):
            say(f"--{name} is now {getattr(args, name)} (the checkpoint's run used {before[name]})")
    if args.lr_schedule == "cosine" and before.get("num_epochs", args.num_epochs) != args.num_epochs:
        epoch, planned = checkpoint["epoch"], before["num_epochs"]
        was = vae.learning_rate(epoch, planned, before.get("learn_rate", args.learn_rate),
                                before.get("lr_min", args.lr_min), before.get("lr_schedule", "constant"))
        say(f"the cosine schedule now runs over {args.num_epochs} epochs (the checkpoint's run planned {planned}): "
            f"epoch {epoch} trains at {learning_rate(args, epoch):.3g} where it would have at {was:.3g}")
    epoch = checkpoint["epoch"]
    return Run(model, optimizer, epoch, checkpoint["best_loss"], checkpoint["history"], epoch)


def learning_rate(args, epoch):
    """Adam's rate in an epoch under the run's schedule."""
    return vae.learning_rate(epoch, args.num_epochs, args.learn_rate, args.lr_min, args.lr_schedule)


def train(args, run, data, pictures):
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
                                            should_stop=SIGNALS.stopping, on_step=show_step if show_bar else None,
                                            gradient=args.iw_gradient)
        if train_metrics is None:
            raise Interrupted(SIGNALS.received, epoch)
        if not (all(map(math.isfinite, train_metrics)) and all(p.isfinite().all() for p in run.model.parameters())):
            raise NonFinite("loss", f"epoch {epoch}")
        test_metrics = vae.evaluate(run.model, data.test.x_hat, data.test.x)
        if not all(map(math.isfinite, test_metrics)):
            raise NonFinite("test loss", f"epoch {epoch}")
        seconds = time.perf_counter() - t0
        save_epoch(args, run, pictures, (train_metrics, test_metrics), seconds)
        # K > 1: the training bound -L_K first, then the -ELBO's two terms of the same samples
        label = "L_tot" if args.iw_train == 1 else f"-L_{args.iw_train}"
        say(f"epoch {epoch}: {label} %03.2f L_likelihood %03.2f L_divergence %03.2f" % tuple(train_metrics)
            + " | test L_tot %.2f L_likelihood %.2f L_divergence %.2f" % tuple(test_metrics)
            + (f" | lr {learning_rate(args, epoch):.2e}" if args.lr_schedule != "constant" else "")
            + " | %.1f s" % seconds)
    SIGNALS.check()


def save_epoch(args, run, pictures, figures, seconds):
    """metrics.csv, loss.png, the pictures after a new best training loss or the last epoch, checkpoint.pt."""
    train_figures, test_figures = figures
    epoch, folder = run.epoch, pictures.folder
    run.history.append({"epoch": epoch, **{f"train_{k}": v for k, v in train_figures._asdict().items()},
                        **{f"test_{k}": v for k, v in test_figures._asdict().items()}, "seconds": seconds})
    folder.write(METRICS_CSV, render_metrics(run.history))
    folder.write(LOSS_PNG, lambda f: plot_utils.save_loss_curve(
        f, [r["epoch"] for r in run.history], [r["train_loss"] for r in run.history],
        [r["test_loss"] for r in run.history]))
    if train_figures.loss < run.best_loss or epoch + 1 == args.num_epochs:
        run.best_loss = min(run.best_loss, train_figures.loss)
        pictures.save(run.model, epoch)
    run.epoch = epoch + 1
    folder.write(CHECKPOINT, lambda f: vae.save_checkpoint(
        f, run.model, run.optimizer, epoch=run.epoch, best_loss=run.best_loss, history=run.history,
        args=dict(vars(args)), rng=rng_state(pictures.device)))


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


def final_evaluation(args, run, data, folder):
    """The importance-weighted likelihood bound and the denoising error, printed and in evaluation.json."""
    test = data.test
    evaluation = {"epochs": args.num_epochs, "test_images": len(test.x)}
    if args.iw_samples:
        t0 = time.perf_counter()
        chunks = vae.iw_chunks(len(test.x), args.iw_samples)
        with tqdm(total=len(test.x), desc=f"test log p(x), K={args.iw_samples}", leave=False,
                  disable=not sys.stderr.isatty()) as bar:
            done = []

            def chunk_done():
                SIGNALS.check(phase="the final evaluation")
                done.append(1)
                if len(done) == 1:
                    estimate = (time.perf_counter() - t0) * chunks
                    if estimate > LONG_EVALUATION_S:
                        say(f"test log p(x) with K={args.iw_samples} on {len(test.x)} images: about "
                            f"{duration(estimate)}")
            log_px = vae.mean_log_likelihood(run.model, test.x_hat, test.x, args.iw_samples,
                                             on_batch=bar.update, on_chunk=chunk_done)
        if not math.isfinite(log_px):
            raise NonFinite("test log p(x) bound", "the final evaluation")
        say("test log p(x) >= -%.2f nats (K=%d, %.1f s)" % (-log_px, args.iw_samples, time.perf_counter() - t0))
        evaluation.update(K=args.iw_samples, test_log_likelihood=log_px)
    if args.add_noise:
        noisy, restored = vae.mean_abs_error(run.model, test.x_hat, test.x)
        say("denoising: mean absolute error to the clean test images: noisy %.4f, restored %.4f" % (noisy, restored))
        evaluation.update(mae_noisy=noisy, mae_restored=restored)
    if args.iw_samples or args.add_noise:
        folder.write(EVALUATION_JSON, lambda f: f.write(json.dumps(evaluation, indent=2, allow_nan=False).encode()))


def duration(seconds):
    """A duration for people: seconds, minutes or hours."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class Pictures:
    """The pictures' fixed inputs (test images, manifold grid, prior samples) on the run's device, and their
    drawing into the results folder."""

    def __init__(self, plan, data, folder):
        args, test = plan.args, data.test
        self.folder, self.grids = folder, plan.grids
        self.add_noise, self.device = args.add_noise, plan.device
        n_prr = self.grids["PRR"].count
        self.x_prr, self.x_prr_hat = test.x[:n_prr], test.x_hat[:n_prr]
        self.x_pmlr_hat, self.y_pmlr = test.x_hat[:args.PMLR_n_samples], test.y[:args.PMLR_n_samples]
        z_grid = plot_utils.manifold_z(args.PMLR_n_img_x, args.PMLR_n_img_y, args.PMLR_z_range, args.PMLR_grid)
        self.z_grid, self.limit = torch.from_numpy(z_grid).to(self.device), plot_utils.scatter_limit(z_grid)
        # the same prior samples every epoch, from their own generator: training's stream is untouched
        generator = torch.Generator().manual_seed(args.seed)
        self.z_prs = torch.randn(self.grids["PRS"].count, args.dim_z, generator=generator).to(self.device)

    def grid(self, grid, name, images, stretch=False):
        """Write one grid's images as the output name."""
        self.folder.write(name, lambda f: plot_utils.save_grid(f, images.cpu(), grid.n_x, grid.n_y, grid.factor,
                                                               stretch))

    def save_inputs(self):
        """input.jpg, and input_noise.jpg (stretched min..max to 0..255, as the original drew it)."""
        prr = self.grids["PRR"]
        if prr.on:
            self.grid(prr, INPUT_JPG, self.x_prr)
            if self.add_noise:
                self.grid(prr, INPUT_NOISE_JPG, self.x_prr_hat, stretch=True)

    def save(self, model, epoch):
        """The epoch's PRR, PMLR and PRS pictures; their sampling leaves training's random stream alone."""
        prr, pmlr, prs = self.grids["PRR"], self.grids["PMLR"], self.grids["PRS"]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if prr.on:
                self.grid(prr, picture_name("PRR", epoch), model.reconstruct(self.x_prr_hat))
            if pmlr.on:
                self.grid(pmlr, picture_name("PMLR", epoch), model.decode(self.z_grid))
                z = model.encode(self.x_pmlr_hat)[0].cpu()
                self.folder.write(picture_name("PMLR_map", epoch),
                                  lambda f: plot_utils.save_scatter(f, z, self.y_pmlr.cpu(), self.limit))
            if prs.on:
                self.grid(prs, picture_name("PRS", epoch), model.decode(self.z_prs))


def say(line):
    """Print a line of the run's report. Standard output that fails (a full disk) costs one line on stderr,
    once, and never the run: its figures are in metrics.csv. A reader that went away (| head) ends it."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        raise
    except OSError as e:
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is still buffered goes nowhere
        sys.stdout = open(os.devnull, "w")
        print(f"run_main.py: warning: cannot write to standard output ({(e.strerror or str(e)).lower()}); "
              f"the run goes on, its figures are in metrics.csv", file=sys.stderr, flush=True)


# ---- the results folder: the one owner of its files

CHECKPOINT = "checkpoint.pt"
METRICS_CSV = "metrics.csv"
LOSS_PNG = "loss.png"
EVALUATION_JSON = "evaluation.json"
INPUT_JPG = "input.jpg"
INPUT_NOISE_JPG = "input_noise.jpg"
PICTURE_KINDS = ("PRR", "PMLR", "PMLR_map", "PRS")
LOCK_NAME = ".run_main.lock"
# every name a run writes: the fixed ones and the epochs' pictures, and nothing else
OUTPUT_NAME = re.compile("|".join(map(re.escape, (CHECKPOINT, METRICS_CSV, LOSS_PNG, EVALUATION_JSON, INPUT_JPG,
                                                  INPUT_NOISE_JPG)))
                         + rf"|({'|'.join(PICTURE_KINDS)})_epoch_\d{{2,}}\.jpg")


def picture_name(kind, epoch):
    """The file of an epoch's picture of one kind (PRR, PMLR, PMLR_map or PRS)."""
    return f"{kind}_epoch_{epoch:02d}.jpg"


def is_output(name):
    """Whether name is one a run writes into the results folder."""
    return OUTPUT_NAME.fullmatch(name) is not None


class ResultsFolder:
    """--results_path, locked by this run: writes its named outputs, and moves an earlier run's aside."""

    def __init__(self, path):
        self.path = path

    def file(self, name):
        """The path of one of the run's outputs."""
        assert is_output(name), name
        return os.path.join(self.path, name)

    def write(self, name, render):
        """render(file) into memory, then write the output through a temporary file and a rename: a reader
        never sees half a file, and a failed write leaves no temporary file and raises RunError."""
        buffer = io.BytesIO()
        render(buffer)
        path = self.file(name)
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise RunError(f"cannot write {path}: {(e.strerror or str(e)).lower()}") from None

    def outputs(self):
        """The outputs an earlier run left here, sorted."""
        return sorted(name for name in os.listdir(self.path)
                      if is_output(name) and os.path.isfile(os.path.join(self.path, name)))

    def remove_stale_temporaries(self):
        """Remove the temporary files of a run that died mid-write (only of this code's names)."""
        for name in os.listdir(self.path):
            if name.endswith(".tmp") and is_output(name[:-4]):
                os.remove(os.path.join(self.path, name))

    def move_earlier_run(self):
        """Move an earlier run's outputs into previous_run_N (N the next free number), all or none."""
        names = self.outputs()
        if not names:
            return
        n = 1
        while os.path.lexists(os.path.join(self.path, f"previous_run_{n}")):
            n += 1
        target = os.path.join(self.path, f"previous_run_{n}")
        os.makedirs(target)
        moved = []
        try:
            for name in names:
                os.replace(os.path.join(self.path, name), os.path.join(target, name))
                moved.append(name)
        except OSError:
            for name in moved:  # put back what had moved: the earlier run stays whole in one folder
                with contextlib.suppress(OSError):
                    os.replace(os.path.join(target, name), os.path.join(self.path, name))
            with contextlib.suppress(OSError):
                os.rmdir(target)
            raise
        say(f"moved the earlier run's {len(names)} files in {self.path} to {target}")


def continues_in_place(resume, path):
    """Whether resuming resume continues the run in folder path: only when it is that folder's own checkpoint
    (the same file, links resolved). Any other checkpoint, a copy or a backup beside it included, branches."""
    own = os.path.join(path, CHECKPOINT)
    with contextlib.suppress(OSError):
        return resume is not None and os.path.exists(own) and os.path.samefile(resume, own)
    return False


@contextlib.contextmanager
def results_folder(path, resume):
    """Create and lock --results_path for this run, remove stale temporary files, and move an earlier run's
    outputs aside unless this run continues that folder's own checkpoint; yields its ResultsFolder."""
    try:
        os.makedirs(path, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        lock = os.fdopen(os.open(os.path.join(path, LOCK_NAME), flags, 0o644), "a")
    except OSError as e:
        why = f"{LOCK_NAME} in it is a symbolic link" if e.errno == errno.ELOOP else (e.strerror or str(e)).lower()
        raise RunError(f"cannot use --results_path {path}: {why}") from None
    with lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise RunError(f"another run is writing to {path}; wait for it to end or choose another "
                               f"--results_path") from None
        folder = ResultsFolder(path)
        try:
            folder.remove_stale_temporaries()
            if not continues_in_place(resume, path):
                folder.move_earlier_run()
        except OSError as e:
            raise RunError(f"cannot tidy --results_path {path}: {(e.strerror or str(e)).lower()}") from None
        yield folder


# ---- signals and failures

class RunError(Exception):
    """A run cannot go on: a one-line message for the user, and the exit status."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


STARTING = "starting"  # the phase before the results folder is touched


class Interrupted(Exception):
    """A signal stopped the run in an epoch, or in a phase (STARTING, the final evaluation), or after training
    (neither)."""

    def __init__(self, signum, epoch=None, phase=None):
        super().__init__(signum, epoch, phase)
        self.signum, self.epoch, self.phase = signum, epoch, phase


class NonFinite(Exception):
    """A figure (what) became infinite or NaN in a phase of the run (an epoch, the final evaluation)."""

    def __init__(self, what, phase):
        super().__init__(what, phase)
        self.what, self.phase = what, phase


class Signals:
    """SIGINT, SIGTERM and SIGHUP set `received` instead of killing the run, which stops at a safe point."""

    received = None

    @contextlib.contextmanager
    def caught(self):
        """Catch the signals for the duration, then restore the handlers there were."""
        self.received = None
        previous = {s: signal.signal(s, self.handle) for s in EXIT_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def handle(self, signum, frame):
        self.received = signum

    def stopping(self):
        """Whether a signal came."""
        return self.received is not None

    def check(self, epoch=None, phase=None):
        """Raise Interrupted if a signal came."""
        if self.received is not None:
            raise Interrupted(self.received, epoch, phase)


SIGNALS = Signals()  # signals are the process's: one catcher for it


def saved_checkpoint(run, folder, resumed):
    """The newest checkpoint a user could resume from: this run's, else the one it resumed (or None)."""
    if run is not None and folder is not None and run.epoch > run.start:
        return folder.file(CHECKPOINT)
    return resumed


def interrupted_message(e, run, saved, command):
    """What an interruption says: where it stopped, what is kept (saved), and the command that continues."""
    if e.phase == STARTING:
        return "interrupted before training started; nothing was written"
    if e.phase is not None:
        return f"interrupted in {e.phase}; {saved} holds all {run.epoch} epochs"
    if e.epoch is None:
        return f"interrupted; all {run.epoch} epochs finished and {saved} holds them"
    if saved is None:
        return f"interrupted in epoch {e.epoch}; no epoch had finished; nothing to resume"
    return (f"interrupted in epoch {e.epoch}; the checkpoint of the {run.epoch} finished epochs is {saved}; "
            f"continue with: {command}")


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


def fail(message, status):
    """Stop with a one-line error and the exit status."""
    print(f"run_main.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


# ---- validation: every check that can fail on the command line, before any work

def validate(parser, args):
    """Fill in defaults or the checkpoint's flags and check every value; returns the run's Plan."""
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
    check_values(parser, args)
    grids = picture_grids(args)
    check_pictures(parser, args, grids)
    device = check_device(parser, args.device)
    check_memory(parser, args, grids, device)
    if args.precision == "bf16" and device.type == "cpu" and not vae.cpu_info()[1]:
        say("--precision bf16 on a CPU without AMX: its bf16 products are slower than fp32 here "
            "(bf16 pays on a GPU or a CPU with AMX)")
    return Plan(args, checkpoint, device, grids)


def check_values(parser, args):
    """Usage errors for the model's, training's and evaluation's values."""
    for name in ("dim_z", "n_hidden", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1 (got {getattr(args, name)})")
    if not vae.KEEP_PROB_MIN <= args.keep_prob <= 1:
        parser.error(f"--keep_prob must be from {vae.KEEP_PROB_MIN} to 1 (got {args.keep_prob})")
    for name, choices in (("precision", vae.PRECISIONS), ("lr_schedule", vae.LR_SCHEDULES),
                          ("output_bias", OUTPUT_BIASES), ("iw_gradient", vae.IW_GRADIENTS)):
        if getattr(args, name) not in choices:  # a checkpoint's value; the command line's is checked by argparse
            parser.error(f"--{name} must be one of {', '.join(choices)} (got {getattr(args, name)!r})")
    if not (args.learn_rate > 0 and math.isfinite(args.learn_rate)):
        parser.error(f"--learn_rate must be positive (got {args.learn_rate})")
    if not 0 <= args.lr_min <= args.learn_rate:
        parser.error(f"--lr_min must be from 0 to --learn_rate {args.learn_rate} (got {args.lr_min})")
    if args.kl_warmup < 0:
        parser.error(f"--kl_warmup must be 0 (off) or a number of epochs (got {args.kl_warmup})")
    if args.iw_train < 1:
        parser.error(f"--iw_train must be at least 1 (got {args.iw_train})")
    if args.iw_gradient == "dreg" and args.iw_train == 1:
        parser.error("--iw_gradient dreg needs --iw_train K > 1 (the -ELBO's KL is in closed form: there is no "
                     "sampled log q whose score term DReG removes)")
    if not SEED_RANGE[0] <= args.seed <= SEED_RANGE[1]:
        parser.error(f"--seed must be from -2**63 to 2**64 - 1 (got {args.seed})")
    if args.iw_samples < 0:
        parser.error(f"--iw_samples must be 0 (off) or a positive number of samples (got {args.iw_samples})")
    if os.path.exists(args.results_path) and not os.path.isdir(args.results_path):
        parser.error(f"--results_path {args.results_path} is an existing file, not a folder")


def check_pictures(parser, args, grids):
    """Usage errors for the pictures' flags."""
    check_grid(parser, grids["PRR"], mnist_data.TEST_SIZE)
    check_grid(parser, grids["PRS"])
    if args.PMLR:
        if args.dim_z != 2:
            parser.error(f"--PMLR True needs --dim_z 2 (got {args.dim_z})")
        check_grid(parser, grids["PMLR"])
        if not 0 < args.PMLR_z_range <= torch.finfo(torch.float32).max / 2:
            parser.error(f"--PMLR_z_range must be positive and at most 1.7e38 (got {args.PMLR_z_range})")
        if not 1 <= args.PMLR_n_samples <= mnist_data.TEST_SIZE:
            parser.error(f"--PMLR_n_samples must be from 1 to {mnist_data.TEST_SIZE} (got {args.PMLR_n_samples})")


def check_device(parser, name):
    """The device --device names (auto: CUDA, then MPS, then CPU); a usage error if it is not there."""
    if name == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        parser.error("--device mps: no MPS device is available")
    return pick_device(name)


def check_resume(parser, args, checkpoint):
    """Take the model's, the data's and training's flags from the checkpoint (a model or data flag given that
    differs is a usage error) and check the fields of the checkpoint this run uses."""
    before = checkpoint["args"]
    for name, default in {**SAVED_FLAGS, **CHANGEABLE_FLAGS}.items():
        value = before.get(name, default)
        kind = (int, float) if isinstance(default, float) else type(default)
        if not isinstance(value, kind) or (isinstance(value, bool) and not isinstance(default, bool)):
            parser.error(f"--resume: {args.resume} is a damaged checkpoint (bad args {name}: {value!r})")
    if not isinstance(before.get("num_epochs", 1), int):
        parser.error(f"--resume: {args.resume} is a damaged checkpoint (bad args num_epochs)")
    history = checkpoint["history"]
    for row in history:
        if isinstance(row, dict):
            for old, new in RENAMED_METRICS.items():
                if old in row:
                    row[new] = row.pop(old)
    if len(history) != checkpoint["epoch"] or not all(
            isinstance(row, dict) and row.get("epoch") == i and all(
                isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool) for k in METRICS)
            for i, row in enumerate(history)):
        parser.error(f"--resume: {args.resume} is a damaged checkpoint (bad history)")
    saved = {**SAVED_FLAGS, **{k: v for k, v in before.items() if k in SAVED_FLAGS}, **checkpoint["model_args"]}
    for name in SAVED_FLAGS:
        given = getattr(args, name)
        if given is not None and given != saved[name]:
            parser.error(f"--{name} {given} differs from the checkpoint's {saved[name]}; leave it out or give "
                         f"{saved[name]} (it would change the {'model' if name in ('dim_z', 'n_hidden') else 'data'})")
        setattr(args, name, saved[name])
    for name, default in CHANGEABLE_FLAGS.items():
        if getattr(args, name) is None:
            setattr(args, name, before.get(name, default))
    if args.num_epochs < checkpoint["epoch"]:
        parser.error(f"--num_epochs {args.num_epochs} is fewer than the {checkpoint['epoch']} epochs "
                     f"the checkpoint has finished")


def check_grid(parser, grid, max_images=None):
    """Usage errors for one image grid's flags (when it is drawn)."""
    if not grid.on:
        return
    name = grid.name
    if grid.n_x < 1 or grid.n_y < 1:
        parser.error(f"--{name}_n_img_x and --{name}_n_img_y must be at least 1 (got {grid.n_x} and {grid.n_y})")
    if not (grid.factor > 0 and math.isfinite(grid.factor)):
        parser.error(f"--{name}_resize_factor must be positive (got {grid.factor})")
    side = plot_utils.cell_size(grid.factor)
    if side < 1:
        parser.error(f"--{name}_resize_factor {grid.factor} makes each image smaller than one pixel")
    if max(grid.n_x, grid.n_y) * side > plot_utils.JPEG_MAX_SIDE:
        parser.error(f"--{name} image would be {grid.n_x * side}x{grid.n_y * side} pixels; JPEG allows at most "
                     f"{plot_utils.JPEG_MAX_SIDE} a side")
    if max_images is not None and grid.count > max_images:
        parser.error(f"the {name} grid holds {grid.count} images; at most {max_images} (the test set)")


def check_memory(parser, args, grids, device):
    """Usage errors for a model, a batch or a picture larger than the memory there is."""
    free = available_memory(device)
    if free is None:
        return
    rows = args.batch_size * args.iw_train
    need = vae.training_bytes(args.dim_z, args.n_hidden, rows)
    if need > free:
        if vae.training_bytes(args.dim_z, args.n_hidden, 1) > free:
            what = f"the model (--n_hidden {args.n_hidden}, --dim_z {args.dim_z})"
        else:
            what = f"a batch of --batch_size {args.batch_size}" + (
                f" x --iw_train {args.iw_train} samples" if args.iw_train > 1 else "")
        parser.error(f"{what} needs about {gigabytes(need)} of memory; {gigabytes(free)} is available")
    for grid in grids.values():
        if grid.on:
            need, side = plot_utils.grid_bytes(grid.n_x, grid.n_y, grid.factor), plot_utils.cell_size(grid.factor)
            if need > free:
                parser.error(f"the {grid.name} picture ({grid.n_x * side}x{grid.n_y * side} pixels) needs about "
                             f"{gigabytes(need)} of memory; {gigabytes(free)} is available")


def available_memory(device):
    """Bytes the run can still allocate on device (CUDA: free GPU memory; else MemAvailable), or None."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as f:
            return int(next(line for line in f if line.startswith("MemAvailable:")).split()[1]) * 1024
    return None


def gigabytes(n):
    return f"{n / 1e9:.3g} GB"


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
    """Restore rng_state's output (the CUDA part only on CUDA, and only a state of the right kind)."""
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda")
    if device.type == "cuda" and isinstance(cuda, torch.Tensor) and cuda.dtype == torch.uint8:
        torch.cuda.set_rng_state(cuda, device)


if __name__ == "__main__":
    try:
        main(script=sys.argv[0])
    except KeyboardInterrupt:  # a Ctrl-C after the run's handlers are gone
        fail("interrupted", 130)
    except BrokenPipeError:  # the reader of our output went away (| head): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
