"""Shared fixtures: a tiny synthetic MNIST written as real IDX files, and a way to run the CLI."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import mnist_data  # noqa: E402

# The tests' models are tiny: one thread is as fast, and it keeps a busy 2-core machine from stalling
# two threads that wait on each other. Subprocesses get the same through the environment.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"

N_TRAIN = mnist_data.VALIDATION_SIZE + 256  # 5,000 validation images, then 256 to train on
N_TEST = 200


def write_idx(path, array, magic):
    """Write a uint8 array as an IDX file (big-endian header: magic, then each dimension)."""
    with open(path, "wb") as f:
        f.write(magic.to_bytes(4, "big"))
        for d in array.shape:
            f.write(int(d).to_bytes(4, "big"))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def synthetic_digits(n, seed):
    """Images a VAE can learn quickly: label d lights a bar on row 2 + 2d and column 4 + 2d, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
    rows, cols = 2 + 2 * labels.astype(int), 4 + 2 * labels.astype(int)
    images[np.arange(n), rows, :] = 255
    images[np.arange(n), :, cols] = 220
    return images, labels


def write_mnist(data_dir, n_train=N_TRAIN, n_test=N_TEST):
    """Write the four files torchvision reads, under data_dir/MNIST/raw."""
    raw = mnist_data.raw_folder(str(data_dir))
    os.makedirs(raw, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), images, 2051)
        write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), labels, 2049)
    return str(data_dir)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    """A synthetic MNIST folder shared by the whole session (tests must not modify it)."""
    return write_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture
def no_download(monkeypatch):
    """Make every download fail at once: torchvision's mirrors point at a closed local port."""
    import torchvision
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])


# Small, fast settings for CLI runs on the synthetic data.
FAST = ["--batch_size", "64", "--n_hidden", "64", "--PMLR_n_samples", "100"]


def run_cli(*args, cwd=ROOT, timeout=240, **kwargs):
    """Run run_main.py in a subprocess; returns the CompletedProcess with text output."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_main.py"), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout, **kwargs)


def checkpoint_file(folder, model, name="checkpoint.pt"):
    """A one-epoch checkpoint of model, with Adam's state after one step, written as a run writes it."""
    import checkpoint
    import vae
    optimizer = vae.adam(model, 1e-3)
    x = torch.rand(4, vae.DIM_IMG, generator=torch.Generator().manual_seed(0)).to(next(model.parameters()).device)
    model.loss(x, x, y=torch.arange(4, device=x.device))[0].backward()  # the labels serve a conditional model
    optimizer.step()
    row = {k: 1.0 for k in checkpoint.METRICS}
    row["epoch"] = 0
    path = os.path.join(folder, name)
    checkpoint.save(path, model, optimizer, epoch=1, best_loss=1.0, history=[row], args={},
                    rng={"cpu": torch.get_rng_state()})
    return path


def usage_error(capsys, argv):
    """Parse argv expecting a usage error; return its stderr."""
    import cli
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# the devices a test that takes one runs on: the CPU, and CUDA where there is one (skipped, not failed, without)
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                               reason="no CUDA device"))]
