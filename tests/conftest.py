"""What the tests share: a synthetic MNIST written as real IDX files, ways to run the command line, a small
trained run, and one helper to edit a checkpoint as a user with torch.load and torch.save would."""
import atexit
import contextlib
import csv
import io
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections import namedtuple

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import checkpoint
import cli
import config
import mnist_data
import results_folder
import run_main
import training
import vae
from config import VAEConfig

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


SHARED = {}  # what the whole test run shares


def synthetic_mnist():
    """The test run's synthetic MNIST folder, written on first use (tests must not modify it)."""
    if "mnist" not in SHARED:
        SHARED["mnist"] = folder = tempfile.mkdtemp(prefix="synthetic-mnist-")
        atexit.register(shutil.rmtree, folder, True)
        write_mnist(folder)
    return SHARED["mnist"]


@pytest.fixture(scope="session")
def mnist_dir():
    """The test run's synthetic MNIST folder (tests must not modify it)."""
    return synthetic_mnist()


def with_data(args):
    """The arguments of a run, reading the test run's synthetic MNIST unless they name a --data_dir."""
    args = [str(a) for a in args]
    return args if any(a == "--data_dir" or a.startswith("--data_dir=") for a in args) else [
        *args, "--data_dir", synthetic_mnist()]


@pytest.fixture
def no_download(monkeypatch):
    """Make every download fail at once: torchvision's mirrors point at a closed local port."""
    import torchvision
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])


# Small, fast settings for CLI runs on the synthetic data.
FAST = ["--batch_size", "64", "--n_hidden", "64", "--PMLR_n_samples", "100"]


def run_cli(*args, cwd=ROOT, timeout=240, **kwargs):
    """Run run_main.py in a subprocess (on the test run's synthetic MNIST unless args name a --data_dir); returns
    the CompletedProcess with text output."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_main.py"), *with_data(args)],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout, **kwargs)


def checkpoint_file(folder, model, name="checkpoint.pt"):
    """A one-epoch checkpoint of model, with Adam's state after one step, written as a run writes it."""
    optimizer = training.adam(model, 1e-3)
    x = torch.rand(4, config.DIM_IMG, generator=torch.Generator().manual_seed(0)).to(next(model.parameters()).device)
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
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# the devices a test that takes one runs on: the CPU, and CUDA where there is one (skipped, not failed, without)
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                               reason="no CUDA device"))]


EPOCH_LINE = re.compile(r"^epoch (\d+): L_tot \d+\.\d\d L_likelihood \d+\.\d\d L_divergence \d+\.\d\d"
                        r" \| test L_tot \d+\.\d\d L_likelihood \d+\.\d\d L_divergence \d+\.\d\d \| [\d.]+ s$")


Done = namedtuple("Done", "status stdout stderr")


def run(*args):
    """run_main.main(args) in this process (on the test run's synthetic MNIST unless args name a --data_dir): its
    exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_main.main(with_data(args))
            status = 0
        except SystemExit as e:
            status = e.code
    return Done(status, out.getvalue(), err.getvalue())


def one_line_error(done, status, needle):
    assert done.status == status, done
    assert done.stderr.startswith("run_main.py: error:") and done.stderr.count("\n") == 1, done.stderr
    assert needle in done.stderr, done.stderr


def metrics(results):
    with open(os.path.join(results, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def without_seconds(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def epochs_printed(stdout):
    return [int(m.group(1)) for m in map(EPOCH_LINE.match, stdout.splitlines()) if m]


def saved_epoch(results):
    return torch.load(os.path.join(results, "checkpoint.pt"), weights_only=True)["epoch"]


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """One epoch of the default model shape (FAST), its folder and checkpoint."""
    folder = tmp_path_factory.mktemp("small") / "R"
    done = run("--num_epochs", "1", "--PRR", "False", *FAST, "--results_path", folder)
    assert done.status == 0, done.stderr
    return folder


def images(n, seed=0):
    x, _ = synthetic_digits(n, seed)
    return torch.from_numpy(x).reshape(n, 784).float() / 255


def edited(path, change, out=None):
    """A copy of the checkpoint at path, changed by change(dict) as a user with torch.load and torch.save would,
    written to out (default: edited.pt beside it; its folder is made)."""
    raw = torch.load(path, weights_only=True)
    change(raw)
    out = pathlib.Path(out if out is not None else os.path.join(os.path.dirname(path), "edited.pt"))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(raw, out)
    return out


def picture(results, name):
    return np.asarray(Image.open(os.path.join(results, name)), dtype=float)


def set_field(*keys, value):
    def change(raw):
        target = raw
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value(target[keys[-1]]) if callable(value) else value
    return change


DENOISING_2D = ["--dim_z", "2", "--PMLR", "True", "--add_noise", "True"]


@pytest.fixture(scope="module")
def first_run(mnist_dir, tmp_path_factory):
    """Two epochs of the denoising 2-D model with PMLR and PRS, into a folder that already holds a user file."""
    results = tmp_path_factory.mktemp("first") / "results"
    results.mkdir()
    (results / "keep.txt").write_text("mine")
    done = run(*DENOISING_2D, "--PRS", "True", "--num_epochs", "2", *FAST, "--results_path", results)
    assert done.status == 0, done.stderr
    return str(results), done


def failing_open(monkeypatch, fails, error):
    """Make results_folder.py's open raise error (after writing a little) for the files fails(path) picks."""
    def fake_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if "w" in mode and fails(str(path)):
            f.write(b"partial")
            f.close()
            raise error
        return f
    monkeypatch.setattr(results_folder, "open", fake_open, raising=False)


def conditional(dim_z=2, n_hidden=16, **kwargs):
    torch.manual_seed(0)
    return vae.VAE(VAEConfig(dim_z, n_hidden, conditional=True, **kwargs)).eval()


CVAE_2D = ["--conditional", "True", "--dim_z", "2", *FAST]


@pytest.fixture(scope="module")
def cvae_run(mnist_dir, tmp_path_factory):
    """Two epochs of a 2-D conditional model with every picture, and a few images in PARR and PIR."""
    results = tmp_path_factory.mktemp("cvae") / "results"
    done = run(*CVAE_2D, "--PMLR", "True", "--PMLR_n_img_x", "4", "--PMLR_n_img_y", "3", "--PRS", "True",
               "--PARR", "True", "--PARR_n_img_y", "3", "--PIR", "True", "--PIR_n_img_x", "5", "--PIR_n_img_y", "2",
               "--iw_samples", "3", "--num_epochs", "2", "--results_path", results)
    assert done.status == 0, done.stderr
    return str(results), done


@pytest.fixture(scope="session")
def trained():
    """A small VAE trained for a few hundred steps on synthetic digits, and 200 test images (tests must not change
    the model)."""
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(dim_z=2, n_hidden=64))
    optimizer = training.adam(model, 3e-3)
    x = images(512)
    for _ in range(40):
        training.train_epoch(model, optimizer, [(x[i:i + 64], x[i:i + 64], None) for i in range(0, 512, 64)])
    return model.eval(), images(200, seed=1)


@pytest.fixture
def good(tmp_path):
    """A sound checkpoint of a small model, and the model."""
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(dim_z=3, n_hidden=24, keep_prob=0.8))
    return checkpoint_file(tmp_path, model), model


def adam_state(optimizer, i):
    return optimizer.state_dict()["state"][i]


def one_element_moments(checkpoint):
    for v in checkpoint["optimizer"]["state"].values():
        v["exp_avg"], v["exp_avg_sq"] = torch.zeros(1), torch.zeros(1)
