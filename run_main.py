"""Train the MNIST VAE of Kingma & Welling: parse, validate, load, train, evaluate, save."""
import argparse
import csv
import json
import math
import os
import pathlib
import shlex
import signal
import sys
import time

import torch
from tqdm import tqdm

import mnist_data
import plot_utils
import vae

CHECKPOINT_FORMAT = "pytorch-mnist-vae checkpoint 1"
CHECKPOINT_NAME = "checkpoint.pt"
MAX_PRR_IMAGES = 10000
MAX_PMLR_SAMPLES = 10000
DEFAULT_DIM_Z, DEFAULT_N_HIDDEN = 20, 500
METRICS = ("epoch", "train_loss", "train_likelihood", "train_divergence",
           "test_loss", "test_likelihood", "test_divergence", "seconds")


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (the full usage of 25 flags would bury the message)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def fail(message, status=1):
    """Stop with a one-line error and no traceback."""
    print(f"run_main.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def str2bool(text):
    """Parse True/False/true/false/yes/no/1/0 (the original's type=bool made every string True)."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected True or False (or yes/no, 1/0), got {text!r}")
    return value


def build_parser():
    """The command line: the original's flags and defaults, plus data, seed, device, evaluation and resume."""
    p = Parser(prog="run_main.py", description="PyTorch VAE for MNIST (Kingma & Welling, arXiv 1312.6114)")
    p.add_argument("--dim_z", type=int, default=None, help=f"dimension of the latent vector (default {DEFAULT_DIM_Z})")
    p.add_argument("--results_path", default="results", help="folder for images, metrics and checkpoint")
    p.add_argument("--add_noise", type=str2bool, default=False, help="train to denoise salt & pepper noise")
    p.add_argument("--n_hidden", type=int, default=None, help=f"hidden units per MLP layer (default {DEFAULT_N_HIDDEN})")
    p.add_argument("--learn_rate", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--num_epochs", type=int, default=20, help="total number of epochs (counting resumed ones)")
    p.add_argument("--batch_size", type=int, default=128, help="batch size")
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
    p.add_argument("--data_dir", default="data", help="folder holding (or receiving) MNIST/raw")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="auto: CUDA, then MPS, then CPU")
    p.add_argument("--iw_samples", type=int, default=0,
                   help="after training, the importance-weighted test log-likelihood with K samples (0: off)")
    p.add_argument("--resume", default=None, metavar="PATH", help="continue from a checkpoint.pt")
    return p


def load_checkpoint(path):
    """Read a checkpoint of this project, or None with the reason it is not one."""
    if not os.path.isfile(path):
        return None, f"--resume: no such file: {path}"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, garbage, or an unsafe pickle: all one message
        return None, f"--resume: {path} is corrupt or not a PyTorch file ({type(e).__name__})"
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        return None, f"--resume: {path} is not a checkpoint of this VAE"
    return checkpoint, None


def check_grid(parser, name, n_x, n_y, resize_factor):
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


def parse_args(argv=None):
    """Parse and validate the command line; returns (args, checkpoint or None). Bad values exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    checkpoint = None
    if args.resume is not None:
        checkpoint, reason = load_checkpoint(args.resume)
        if checkpoint is None:
            parser.error(reason)
        for name in ("dim_z", "n_hidden"):
            given, saved = getattr(args, name), checkpoint["model_args"][name]
            if given is not None and given != saved:
                parser.error(f"--{name} {given} differs from the checkpoint's {saved}; leave it out or give {saved}")
            setattr(args, name, saved)
        if args.num_epochs < checkpoint["epoch"]:
            parser.error(f"--num_epochs {args.num_epochs} is fewer than the {checkpoint['epoch']} epochs "
                         f"the checkpoint has finished")
    else:
        args.dim_z = DEFAULT_DIM_Z if args.dim_z is None else args.dim_z
        args.n_hidden = DEFAULT_N_HIDDEN if args.n_hidden is None else args.n_hidden
        if args.num_epochs < 1:
            parser.error(f"--num_epochs must be at least 1 (got {args.num_epochs})")
    for name in ("dim_z", "n_hidden", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1 (got {getattr(args, name)})")
    if not (args.learn_rate > 0 and math.isfinite(args.learn_rate)):
        parser.error(f"--learn_rate must be positive (got {args.learn_rate})")
    if args.PRR:
        check_grid(parser, "PRR", args.PRR_n_img_x, args.PRR_n_img_y, args.PRR_resize_factor)
        if args.PRR_n_img_x * args.PRR_n_img_y > MAX_PRR_IMAGES:
            parser.error(f"the PRR grid holds {args.PRR_n_img_x * args.PRR_n_img_y} images; "
                         f"at most {MAX_PRR_IMAGES} (the test set)")
    if args.PMLR:
        if args.dim_z != 2:
            parser.error(f"--PMLR True needs --dim_z 2 (got {args.dim_z})")
        check_grid(parser, "PMLR", args.PMLR_n_img_x, args.PMLR_n_img_y, args.PMLR_resize_factor)
        if not (args.PMLR_z_range > 0 and math.isfinite(args.PMLR_z_range)):
            parser.error(f"--PMLR_z_range must be positive (got {args.PMLR_z_range})")
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


def atomic_write(path, write):
    """Call write(tmp_path), then rename over path, so a reader never sees half a file."""
    tmp = f"{path}.tmp"
    write(tmp)
    os.replace(tmp, path)


def write_metrics(path, history):
    """metrics.csv: one row per finished epoch."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(METRICS)
            for row in history:
                writer.writerow([row["epoch"]] + [f"{row[k]:.6f}" for k in METRICS[1:-1]] + [f"{row['seconds']:.3f}"])
    atomic_write(path, write)


def resume_command(argv, checkpoint_path):
    """The command line that continues this run from its checkpoint."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            kept.append(arg)
    return shlex.join(["python", "run_main.py", *kept, "--resume", checkpoint_path])


def main(argv=None):
    """Parse, validate, load, train, evaluate, save."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, checkpoint = parse_args(argv)
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    try:
        os.makedirs(args.results_path, exist_ok=True)
    except OSError as e:
        fail(f"cannot create --results_path {args.results_path}: {e.strerror}")
    out = lambda name: os.path.join(args.results_path, name)  # noqa: E731
    checkpoint_path = out(CHECKPOINT_NAME)

    # load
    try:
        data = mnist_data.load_mnist(args.data_dir, device)
    except mnist_data.MNISTError as e:
        fail(str(e))
    n_batches = mnist_data.num_batches(len(data.train_x), args.batch_size)
    if n_batches == 0:
        fail(f"--batch_size {args.batch_size} is larger than the {len(data.train_x)} training images", 2)
    n_prr = args.PRR_n_img_x * args.PRR_n_img_y if args.PRR else 0
    n_pmlr = args.PMLR_n_samples if args.PMLR else 0
    if max(n_prr, n_pmlr) > len(data.test_x):
        fail(f"the plots need {max(n_prr, n_pmlr)} test images; {args.data_dir} has {len(data.test_x)}", 2)

    model = vae.VAE(args.dim_z, args.n_hidden).to(device)
    optimizer = vae.adam(model, args.learn_rate)
    start, best_loss, history = 0, math.inf, []
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        for group in optimizer.param_groups:
            group["lr"] = args.learn_rate
        start, best_loss, history = checkpoint["epoch"], checkpoint["best_loss"], checkpoint["history"]
        set_rng_state(checkpoint["rng"], device)
        print(f"resumed from {args.resume} after {start} epochs", flush=True)

    # fixed inputs for the pictures; their noise has its own generator so it never shifts training's stream
    fixed_noise = torch.Generator(device=device).manual_seed(args.seed)
    x_prr = data.test_x[:n_prr]
    x_prr_hat = mnist_data.salt_and_pepper(x_prr, fixed_noise) if args.add_noise else x_prr
    x_pmlr = data.test_x[:n_pmlr]
    x_pmlr_hat = mnist_data.salt_and_pepper(x_pmlr, fixed_noise) if args.add_noise else x_pmlr
    z_grid = plot_utils.manifold_z(args.PMLR_n_img_x, args.PMLR_n_img_y, args.PMLR_z_range, args.PMLR_grid)
    if args.PRR:
        plot_utils.save_grid(out("input.jpg"), x_prr.cpu(), args.PRR_n_img_x, args.PRR_n_img_y,
                             args.PRR_resize_factor)
        if args.add_noise:
            plot_utils.save_grid(out("input_noise.jpg"), x_prr_hat.cpu(), args.PRR_n_img_x, args.PRR_n_img_y,
                                 args.PRR_resize_factor)

    def save_plots(epoch):
        # sampling for the pictures must not shift the training stream, or a resumed run would differ
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if args.PRR:
                plot_utils.save_grid(out(f"PRR_epoch_{epoch:02d}.jpg"), model.reconstruct(x_prr_hat).cpu(),
                                     args.PRR_n_img_x, args.PRR_n_img_y, args.PRR_resize_factor)
            if args.PMLR:
                decoded = model.decode(torch.from_numpy(z_grid).to(device)).cpu()
                plot_utils.save_grid(out(f"PMLR_epoch_{epoch:02d}.jpg"), decoded,
                                     args.PMLR_n_img_x, args.PMLR_n_img_y, args.PMLR_resize_factor)
                plot_utils.save_scatter(out(f"PMLR_map_epoch_{epoch:02d}.jpg"), model.latent_mean(x_pmlr_hat).cpu(),
                                        data.test_y[:n_pmlr].cpu(), plot_utils.scatter_limit(z_grid))

    # train
    saved = args.resume  # the newest checkpoint a user could resume from
    stop = []
    signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
    show_bar = sys.stderr.isatty()
    for epoch in range(start, args.num_epochs):
        t0 = time.perf_counter()
        bar = tqdm(total=n_batches, desc=f"epoch {epoch}", leave=False, disable=not show_bar)

        def show_step(step):
            bar.set_postfix(loss=f"{step[0].item():.2f}", refresh=False)
            bar.update()

        train = vae.train_epoch(model, optimizer, mnist_data.batches(data.train_x, args.batch_size, args.add_noise),
                                should_stop=lambda: bool(stop), on_step=show_step if show_bar else None)
        bar.close()
        if train is None:
            if saved is None:
                fail("interrupted in epoch 0, before any epoch finished; nothing to resume", 130)
            fail(f"interrupted in epoch {epoch}; the checkpoint of the {epoch} finished epochs is {saved}; "
                 f"continue with: {resume_command(argv, saved)}", 130)
        train = train.tolist()
        if not all(math.isfinite(v) for v in train):
            kept = f"the last good checkpoint is {saved}" if saved else "no epoch finished"
            fail(f"non-finite loss in epoch {epoch} (try a smaller --learn_rate); {kept}")

        # evaluate
        x_test_hat = mnist_data.salt_and_pepper(data.test_x) if args.add_noise else data.test_x
        test = vae.evaluate(model, x_test_hat, data.test_x).tolist()
        seconds = time.perf_counter() - t0
        print("epoch %d: L_tot %03.2f L_likelihood %03.2f L_divergence %03.2f" % (epoch, *train)
              + " | test L_tot %.2f L_likelihood %.2f L_divergence %.2f" % tuple(test) + " | %.1f s" % seconds,
              flush=True)

        # save
        history.append(dict(zip(METRICS, [epoch, *train, *test, seconds])))
        write_metrics(out("metrics.csv"), history)
        plot_utils.save_loss_curve(out("loss.png"), [r["epoch"] for r in history],
                                   [r["train_loss"] for r in history], [r["test_loss"] for r in history])
        if train[0] < best_loss or epoch + 1 == args.num_epochs:
            best_loss = min(best_loss, train[0])
            save_plots(epoch)
        state = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "epoch": epoch + 1, "best_loss": best_loss, "history": history,
                 "model_args": {"dim_z": args.dim_z, "n_hidden": args.n_hidden},
                 "args": dict(vars(args)), "rng": rng_state(device)}
        atomic_write(checkpoint_path, lambda tmp: torch.save(state, tmp))
        saved = checkpoint_path
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if stop:
        fail(f"interrupted; all {args.num_epochs} epochs finished and {saved} holds them", 130)
    if start == args.num_epochs:
        save_plots(start - 1)

    # evaluate: the likelihood bound, and how well noise is removed
    evaluation = {"epochs": args.num_epochs, "test_images": len(data.test_x)}
    x_test_hat = mnist_data.salt_and_pepper(data.test_x) if args.add_noise else data.test_x
    if args.iw_samples:
        log_px = vae.mean_log_likelihood(model, x_test_hat, data.test_x, args.iw_samples)
        print("test log p(x) >= -%.2f nats (K=%d)" % (-log_px, args.iw_samples), flush=True)
        evaluation.update(K=args.iw_samples, test_log_likelihood=log_px)
    if args.add_noise:
        noisy, restored = vae.mean_abs_error(model, x_test_hat, data.test_x)
        print("denoising: mean absolute error to the clean test images: noisy %.4f, restored %.4f"
              % (noisy, restored), flush=True)
        evaluation.update(mae_noisy=noisy, mae_restored=restored)
    if args.iw_samples or args.add_noise:
        atomic_write(out("evaluation.json"), lambda tmp: pathlib.Path(tmp).write_text(json.dumps(evaluation, indent=2)))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        fail("interrupted", 130)
