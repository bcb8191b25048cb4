"""Seconds per training epoch: this project's loop in fp32 and bf16, against the common PyTorch way and against its
own floor, the same epoch's matrix products alone.

The common way is how most ports are written: torchvision's MNIST with ToTensor through a DataLoader, a sigmoid
decoder with the clipped log-likelihood, and the default (foreach) Adam; it is timed for the VAE's -ELBO
(--iw_train 1). Every way trains the same architecture from the same initialisation and hyper-parameters. The
floor is every layer's forward, weight-gradient and input-gradient product of an epoch (the decoder's over K rows
per image with --iw_train K), in fp32 and in bf16. All are timed in one process, alternating round by round
(each way's epoch, then each floor), so that a busy machine slows them alike; the ratios are medians of the
rounds' ratios. Prints figures; it is not a test.

    python benchmarks/epoch_speed.py --data_dir data                      # the default model
    python benchmarks/epoch_speed.py --data_dir data --dim_z 50 --keep_prob 1.0 --iw_train 5 --iw_gradient dreg \\
        --binarize True                                                   # the literature's IWAE with DReG

On CUDA every time is taken between synchronisations.
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms.functional import to_tensor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import hardware  # noqa: E402
import mnist_data  # noqa: E402
import training  # noqa: E402
import vae  # noqa: E402
from config import VAEConfig  # noqa: E402

N_TRAIN, N_TEST = 55000, 10000


class CommonVAE(nn.Module):
    """The architecture written the usual way: sigmoid outputs and the original's clipped log-likelihood."""

    def __init__(self, config):
        super().__init__()
        self.dim_z, drop = config.dim_z, 1.0 - config.keep_prob
        n, e, d = config.n_hidden, config.encoder_widths(), config.decoder_widths()
        self.enc = nn.Sequential(nn.Linear(e[0], n), nn.ELU(), nn.Dropout(drop), nn.Linear(n, n), nn.Tanh(),
                                 nn.Dropout(drop), nn.Linear(n, e[-1]))
        self.dec = nn.Sequential(nn.Linear(d[0], n), nn.Tanh(), nn.Dropout(drop), nn.Linear(n, n), nn.ELU(),
                                 nn.Dropout(drop), nn.Linear(n, d[-1]), nn.Sigmoid())
        for m in self.modules():
            if isinstance(m, nn.Linear):
                vae.variance_scaling_(m)

    def loss(self, x_hat, x):
        h = self.enc(x_hat)
        mu, sigma = h[:, :self.dim_z], 1e-6 + F.softplus(h[:, self.dim_z:])
        y = self.dec(mu + sigma * torch.randn_like(sigma)).clamp(1e-8, 1 - 1e-8)
        nll = -torch.sum(x * torch.log(y) + (1 - x) * torch.log(1 - y), 1).mean()
        return nll + vae.kl_divergence(mu, sigma).mean()


class RandomImages(torch.utils.data.Dataset):
    """Stand-in for MNIST when it is not on disk: random images of its shape, as PIL would give them."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return to_tensor(Image.fromarray((self.x[i].reshape(28, 28) * 255).byte().numpy(), mode="L")), 0


def common_loader(data_dir, train_x, batch_size):
    """torchvision MNIST -> ToTensor -> DataLoader, the first 5,000 images held out as the original."""
    if data_dir is None:
        dataset = RandomImages(train_x.cpu())
    else:
        full = torchvision.datasets.MNIST(data_dir, train=True, transform=torchvision.transforms.ToTensor())
        dataset = torch.utils.data.Subset(full, range(mnist_data.VALIDATION_SIZE, len(full)))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)


def common_epoch(model, optimizer, loader, device):
    """One epoch the common way."""
    model.train()
    for x, _ in loader:
        x = x.view(-1, 784).to(device)
        loss = model.loss(x, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@torch.no_grad()
def common_test_loss(model, test_x):
    """The common way's test -ELBO, without dropout."""
    model.eval()
    return sum(model.loss(x, x).item() * len(x) for x in test_x.split(1000)) / len(test_x)


def floor_products(config, batch_size, k, device, dtype):
    """One training step's matrix products (forward, weight gradient, input gradient) of every layer: the
    encoder's over the batch, the decoder's over its K samples of it."""
    products = []
    for widths, rows, input_gradient in ((config.encoder_widths(), batch_size, False),  # the images need none
                                         (config.decoder_widths(), batch_size * k, True)):  # z does
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            x, w, dy = (torch.randn(*s, device=device, dtype=dtype)
                        for s in ((rows, n_in), (n_out, n_in), (rows, n_out)))
            empty = lambda *shape: torch.empty(*shape, device=device, dtype=dtype)  # noqa: E731
            products.append((x, w.t(), empty(rows, n_out)))  # y = x W^T
            products.append((dy.t(), x, empty(n_out, n_in)))  # dW = dy^T x
            if i != 0 or input_gradient:
                products.append((dy, w, empty(rows, n_in)))  # dx = dy W
    return products


def floor_epoch(products, steps):
    """Run an epoch's products."""
    for _ in range(steps):
        for a, b, out in products:
            torch.mm(a, b, out=out)


def mnist_images(data_dir, device, binarize=False):
    """MNIST's training and test images from data_dir on device, or random images of their shape without one."""
    if data_dir:
        data = mnist_data.load_mnist(data_dir, device, binarize)
        return data.train_x, data.test_x
    g = torch.Generator().manual_seed(0)
    return torch.rand(N_TRAIN, 784, generator=g).to(device), torch.rand(N_TEST, 784, generator=g).to(device)


def describe(args, device):
    """The device (the GPU's name, or the CPU's with its cores and threads), torch, the data and the model of
    model_arguments' args, in two lines."""
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else
             f"{hardware.cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads")
    objective = "-ELBO" if args.iw_train == 1 else f"IWAE K={args.iw_train}, {args.iw_gradient}"
    return (f"device: {device.type} ({where}); torch {torch.__version__}; "
            f"data: {'MNIST ' + args.data_dir if args.data_dir else 'random, MNIST shape'}\n"
            f"model: dim_z {args.dim_z}, n_hidden {args.n_hidden}, keep_prob {args.keep_prob}, {objective}, batch "
            f"{args.batch_size}{', binarized' if args.binarize else ''}")


def timed(device, fn):
    """Seconds fn() takes, between synchronisations."""
    hardware.synchronize(device)
    t0 = time.perf_counter()
    fn()
    hardware.synchronize(device)
    return time.perf_counter() - t0


def peak_rss_of_a_run(data_dir, device, epochs):
    """Peak resident memory (MB) of `run_main.py --dim_z 20` with every default, as a child process."""
    with tempfile.TemporaryDirectory() as results:
        subprocess.run([sys.executable, os.path.join(ROOT, "run_main.py"), "--dim_z", "20", "--num_epochs", str(epochs),
                        "--data_dir", data_dir, "--results_path", results, "--device", device.type],
                       check=True, stdout=subprocess.DEVNULL)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def model_arguments(description):
    """The benchmarks' command line for the data and the model, to which each adds its own."""
    p = argparse.ArgumentParser(description=description)
    yes = lambda text: text.lower() in ("true", "yes", "1")  # noqa: E731
    p.add_argument("--data_dir", default="data" if os.path.isdir(mnist_data.raw_folder("data")) else None,
                   help="folder holding MNIST/raw (default data when it has MNIST; else random data of MNIST's shape)")
    p.add_argument("--dim_z", type=int, default=20)
    p.add_argument("--n_hidden", type=int, default=500)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--keep_prob", type=float, default=0.9)
    p.add_argument("--iw_train", type=int, default=1, help="K: the IWAE bound with K samples (1: the -ELBO)")
    p.add_argument("--iw_gradient", default="iwae", choices=("iwae", "dreg"))
    p.add_argument("--binarize", type=yes, default=False, help="binarized batches, as --binarize True")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv=None):
    p = model_arguments(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5, help="rounds: epochs of each way, alternating (at least 1)")
    p.add_argument("--memory_epochs", type=int, default=0,
                   help="epochs of a run_main.py --dim_z 20 run whose peak memory is read (0: none)")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.iw_train < 1 or args.memory_epochs < 0:
        p.error("--epochs and --iw_train must be at least 1, --memory_epochs at least 0")
    device, config = torch.device(args.device), VAEConfig(args.dim_z, args.n_hidden, args.keep_prob)

    train_x, test_x = mnist_images(args.data_dir, device, args.binarize)
    steps = mnist_data.num_batches(len(train_x), args.batch_size)
    ways = {"ours fp32": "fp32", "ours bf16": "bf16", **({"common": None} if args.iw_train == 1 else {})}
    models = {}
    for name in ways:
        torch.manual_seed(0)  # the same initial weights, and the same random stream, for each way
        model = (CommonVAE(config) if name == "common" else vae.VAE(config)).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3) if name == "common" else training.adam(model, 1e-3)
        models[name] = (model, optimizer, torch.get_rng_state())
    loader = common_loader(args.data_dir, train_x, args.batch_size) if "common" in ways else None
    floors = {dtype: floor_products(config, args.batch_size, args.iw_train, device, dtype)
              for dtype in (torch.float32, torch.bfloat16)}
    floor_epoch(floors[torch.float32], 1)  # warm up the kernels
    floor_epoch(floors[torch.bfloat16], 1)

    times = {name: [] for name in [*ways, "floor fp32", "floor bf16"]}
    for epoch in range(args.epochs):
        for name, precision in ways.items():
            model, optimizer, state = models[name]
            torch.set_rng_state(state)  # each way continues its own random stream
            if name == "common":
                seconds = timed(device, lambda: common_epoch(model, optimizer, loader, device))  # noqa: B023
            else:
                batches = mnist_data.batches(train_x, args.batch_size, binarize=args.binarize)
                seconds = timed(device, lambda: training.train_epoch(  # noqa: B023
                    model, optimizer, batches, precision, args.iw_train, gradient=args.iw_gradient))  # noqa: B023
            times[name].append(seconds)
            models[name] = (model, optimizer, torch.get_rng_state())
        for dtype, label in ((torch.float32, "floor fp32"), (torch.bfloat16, "floor bf16")):
            times[label].append(timed(device, lambda: floor_epoch(floors[dtype], steps)))  # noqa: B023
        print(f"round {epoch}: " + ", ".join(f"{name} {t[-1]:.2f} s" for name, t in times.items()), flush=True)
    torch.manual_seed(0)
    test = {name: common_test_loss(model, test_x) if name == "common" else training.evaluate(model, test_x, test_x).loss
            for name, (model, _, _) in models.items()}
    run_rss = peak_rss_of_a_run(args.data_dir, device, args.memory_epochs) if args.data_dir and args.memory_epochs \
        else None

    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))  # noqa: E731
    print("\n" + describe(args, device) + f", {steps} steps/epoch, median of {args.epochs} rounds\n")
    images = steps * args.batch_size
    print(f"| way | s/epoch | images/s | test -ELBO after {args.epochs} epochs |")
    print("|---|---|---|---|")
    for name in times:
        figure = f"{test[name]:.2f}" if name in test else ""
        print(f"| {name} | {median[name]:.2f} | {images / median[name]:,.0f} | {figure} |")
    print(f"\nours fp32 / floor fp32: {ratio('ours fp32', 'floor fp32'):.2f}   "
          f"ours bf16 / floor bf16: {ratio('ours bf16', 'floor bf16'):.2f}   "
          f"bf16 / fp32: {ratio('ours bf16', 'ours fp32'):.2f}   "
          f"test -ELBO bf16 - fp32: {test['ours bf16'] - test['ours fp32']:+.2f} nats")
    if "common" in ways:
        print(f"ours fp32 / common: {ratio('ours fp32', 'common'):.2f}   "
              f"test -ELBO ours - common: {test['ours fp32'] - test['common']:+.2f} nats")
    if run_rss is not None:
        print(f"peak RSS of run_main.py --dim_z 20 ({args.memory_epochs} epochs, with evaluation and plots): "
              f"{run_rss:.0f} MB")


if __name__ == "__main__":
    main()
