"""Seconds per training epoch: this project's loop in fp32 and bf16 against the common PyTorch way, and
the GEMM floors.

The common way is how most ports are written: torchvision's MNIST with ToTensor through a DataLoader,
a sigmoid decoder with the clipped log-likelihood, and the default (foreach) Adam. All three ways train
the same architecture from the same initialisation and hyper-parameters, alternating epoch by epoch in
one process. The floors are the time of the epoch's matrix products alone (forward and backward), in
fp32 and in bf16, measured by this script too. Prints figures; it is not a test.

    python benchmarks/epoch_speed.py --data_dir data

On CUDA every time is taken between synchronisations (torch.cuda.synchronize).
"""
import argparse
import os
import platform
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
import vae  # noqa: E402

N_TRAIN, N_TEST = 55000, 10000
WAYS = {"ours": "fp32", "ours bf16": "bf16", "common": None}  # name: this project's --precision


class CommonVAE(nn.Module):
    """The architecture written the usual way: sigmoid outputs and the original's clipped log-likelihood."""

    def __init__(self, dim_z, n_hidden):
        super().__init__()
        self.dim_z = dim_z
        drop = 1.0 - vae.KEEP_PROB
        self.enc = nn.Sequential(nn.Linear(784, n_hidden), nn.ELU(), nn.Dropout(drop), nn.Linear(n_hidden, n_hidden),
                                 nn.Tanh(), nn.Dropout(drop), nn.Linear(n_hidden, 2 * dim_z))
        self.dec = nn.Sequential(nn.Linear(dim_z, n_hidden), nn.Tanh(), nn.Dropout(drop), nn.Linear(n_hidden, n_hidden),
                                 nn.ELU(), nn.Dropout(drop), nn.Linear(n_hidden, 784), nn.Sigmoid())
        for m in self.modules():
            if isinstance(m, nn.Linear):
                vae.variance_scaling_(m)

    def loss(self, x_hat, x):
        h = self.enc(x_hat)
        mu, sigma = h[:, :self.dim_z], 1e-6 + F.softplus(h[:, self.dim_z:])
        y = self.dec(mu + sigma * torch.randn_like(sigma)).clamp(1e-8, 1 - 1e-8)
        nll = -torch.sum(x * torch.log(y) + (1 - x) * torch.log(1 - y), 1).mean()
        kl = vae.kl_divergence(mu, sigma).mean()
        return nll + kl, nll + kl, nll, kl  # as vae.VAE.loss: (objective, loss, nll, KL)


def common_loader(data_dir, batch_size):
    """torchvision MNIST -> ToTensor -> DataLoader, the first 5,000 images held out as the original."""
    full = torchvision.datasets.MNIST(data_dir, train=True, transform=torchvision.transforms.ToTensor())
    train = torch.utils.data.Subset(full, range(mnist_data.VALIDATION_SIZE, len(full)))
    return torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True)


class RandomImages(torch.utils.data.Dataset):
    """Stand-in for MNIST when it is not on disk: random images of its shape, as PIL would give them."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return to_tensor(Image.fromarray((self.x[i].reshape(28, 28) * 255).byte().numpy(), mode="L")), 0


def common_epoch(model, optimizer, loader, device):
    """One epoch the common way."""
    model.train()
    for x, _ in loader:
        x = x.view(-1, 784).to(device)
        loss = model.loss(x, x)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def gemm_floor(dim_z, n_hidden, batch_size, steps, device, dtype=torch.float32, repeats=3):
    """Seconds for one epoch's matrix products only: every layer's forward, weight-gradient and input-gradient GEMM."""
    with torch.device("meta"):  # the model's own layer shapes, encoder then decoder
        layers = [(m.in_features, m.out_features) for m in vae.VAE(dim_z, n_hidden).modules()
                  if isinstance(m, nn.Linear)]
    products = []
    for i, (n_in, n_out) in enumerate(layers):
        x, w, dy = (torch.randn(*s, device=device, dtype=dtype)
                     for s in ((batch_size, n_in), (n_out, n_in), (batch_size, n_out)))
        empty = lambda *shape: torch.empty(*shape, device=device, dtype=dtype)  # noqa: E731
        products.append((x, w.t(), empty(batch_size, n_out)))        # y = x W^T
        products.append((dy.t(), x, empty(n_out, n_in)))             # dW = dy^T x
        if i != 0:                                                   # no dx for the images (layer 0)
            products.append((dy, w, empty(batch_size, n_in)))        # dx = dy W
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            for a, b, out in products:
                torch.mm(a, b, out=out)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_rss_of_full_run(data_dir, device, epochs):
    """Peak resident memory (MB) of `run_main.py --dim_z 20` with every default, as a child process."""
    with tempfile.TemporaryDirectory() as results:
        subprocess.run([sys.executable, os.path.join(ROOT, "run_main.py"), "--dim_z", "20", "--num_epochs", str(epochs),
                        "--data_dir", data_dir, "--results_path", results, "--device", device.type],
                       check=True, stdout=subprocess.DEVNULL)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default="data" if os.path.isdir(mnist_data.raw_folder("data")) else None,
                   help="folder holding MNIST/raw (default data when it has MNIST; else random data of MNIST's shape)")
    p.add_argument("--epochs", type=int, default=5, help="epochs of each way, alternating")
    p.add_argument("--dim_z", type=int, default=20)
    p.add_argument("--n_hidden", type=int, default=500)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--memory_epochs", type=int, default=2, help="epochs of the run_main.py run whose memory is read")
    args = p.parse_args()
    device = torch.device(args.device)

    if args.data_dir:
        data = mnist_data.load_mnist(args.data_dir, device)
        train_x, test_x = data.train_x, data.test_x
        loader = common_loader(args.data_dir, args.batch_size)
    else:
        g = torch.Generator().manual_seed(0)
        train_x, test_x = torch.rand(N_TRAIN, 784, generator=g), torch.rand(N_TEST, 784, generator=g)
        loader = torch.utils.data.DataLoader(RandomImages(train_x), batch_size=args.batch_size, shuffle=True,
                                             drop_last=True)
        train_x, test_x = train_x.to(device), test_x.to(device)
    steps = mnist_data.num_batches(len(train_x), args.batch_size)

    models = {}
    for name in WAYS:
        torch.manual_seed(0)  # the same initial weights, and the same random stream, for each way
        model = (CommonVAE if name == "common" else vae.VAE)(args.dim_z, args.n_hidden).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3) if name == "common" else vae.adam(model, 1e-3)
        models[name] = (model, optimizer, torch.get_rng_state())

    times = {name: [] for name in WAYS}
    for epoch in range(args.epochs):
        for name in WAYS:
            model, optimizer, state = models[name]
            torch.set_rng_state(state)  # each way continues its own random stream
            sync(device)
            t0 = time.perf_counter()
            if name == "common":
                common_epoch(model, optimizer, loader, device)
            else:
                vae.train_epoch(model, optimizer, mnist_data.batches(train_x, args.batch_size), WAYS[name])
            sync(device)
            times[name].append(time.perf_counter() - t0)
            models[name] = (model, optimizer, torch.get_rng_state())
        print(f"epoch {epoch}: " + ", ".join(f"{name} {times[name][-1]:.2f} s" for name in WAYS), flush=True)
    torch.manual_seed(0)
    test = {name: vae.evaluate(model, test_x, test_x).loss for name, (model, _, _) in models.items()}
    floor = {dtype: gemm_floor(args.dim_z, args.n_hidden, args.batch_size, steps, device, dtype)
             for dtype in (torch.float32, torch.bfloat16)}
    bench_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    run_rss = peak_rss_of_full_run(args.data_dir, device, args.memory_epochs) if args.data_dir else float("nan")

    median = {name: statistics.median(t) for name, t in times.items()}
    ours_s, bf16_s, common_s = median["ours"], median["ours bf16"], median["common"]
    f32_floor, bf16_floor = floor[torch.float32], floor[torch.bfloat16]
    cpu, amx = hardware.cpu_info()
    cpu = platform.processor() if cpu == "unknown" else cpu
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else
             f"{cpu}, {'with' if amx else 'without'} AMX, {torch.get_num_threads()} threads")
    print()
    print(f"device: {device.type} ({where}); torch {torch.__version__}; "
          f"data: {'MNIST ' + args.data_dir if args.data_dir else 'random, MNIST shape'}")
    print(f"model: dim_z {args.dim_z}, n_hidden {args.n_hidden}, batch {args.batch_size}, {steps} steps/epoch, "
          f"median of {args.epochs} epochs each")
    print()
    images = steps * args.batch_size
    print("| way | s/epoch | images/s | test -ELBO after %d epochs |" % args.epochs)
    print("|---|---|---|---|")
    print(f"| this project, fp32 | {ours_s:.2f} | {images / ours_s:,.0f} | {test['ours']:.2f} |")
    print(f"| this project, --precision bf16 | {bf16_s:.2f} | {images / bf16_s:,.0f} | {test['ours bf16']:.2f} |")
    print(f"| common way (DataLoader + ToTensor, foreach Adam) | {common_s:.2f} | "
          f"{images / common_s:,.0f} | {test['common']:.2f} |")
    print(f"| fp32 matrix products alone (floor) | {f32_floor:.2f} | {images / f32_floor:,.0f} | |")
    print(f"| bf16 matrix products alone (floor) | {bf16_floor:.2f} | {images / bf16_floor:,.0f} | |")
    print()
    print(f"ours / common: {ours_s / common_s:.2f}   ours / floor: {ours_s / f32_floor:.2f}   "
          f"test -ELBO ours - common: {test['ours'] - test['common']:+.2f} nats")
    print(f"bf16 / fp32: {bf16_s / ours_s:.2f}   bf16 / common: {bf16_s / common_s:.2f}   "
          f"bf16 / bf16 floor: {bf16_s / bf16_floor:.2f}   "
          f"test -ELBO bf16 - fp32: {test['ours bf16'] - test['ours']:+.2f} nats")
    print(f"peak RSS: this benchmark {bench_rss:.0f} MB; run_main.py --dim_z 20 ({args.memory_epochs} epochs, "
          f"with evaluation and plots) {run_rss:.0f} MB")


if __name__ == "__main__":
    main()
