"""MNIST as whole tensors on the training device: loading, the original's split, batches, noise.

The four raw IDX files are read and checked here, and nothing else (torchvision only downloads them). torch and
numpy are imported by the functions that use them, so that the command line can read this module's sizes at once.
"""
import contextlib
import io
import os
from collections import namedtuple

from report import what_is

IMAGE_SIZE = 28
VALIDATION_SIZE = 5000  # the first 5,000 training images, as the original
TEST_SIZE = 10000  # MNIST's test images
NUM_LABELS = 10  # the digits 0 to 9
# Seed of the one fixed binarization of the test (and validation) images: not --seed, so every run,
# whatever its seed or device, is scored on the same binary test images.
BINARIZE_SEED = 1312_6114

# (file name, IDX magic number, number of dimensions) of the four raw files.
FILES = (
    ("train-images-idx3-ubyte", 2051, 3),
    ("train-labels-idx1-ubyte", 2049, 1),
    ("t10k-images-idx3-ubyte", 2051, 3),
    ("t10k-labels-idx1-ubyte", 2049, 1),
)

MNIST = namedtuple("MNIST", "train_x train_y valid_x valid_y test_x test_y")


class MNISTError(Exception):
    """MNIST is missing or unreadable; the message is one line meant for the user."""


def raw_folder(data_dir):
    """Folder where torchvision keeps the four uncompressed IDX files."""
    return os.path.join(data_dir, "MNIST", "raw")


def _missing(data_dir):
    return [name for name, _, _ in FILES if not os.path.isfile(os.path.join(raw_folder(data_dir), name))]


def _download(data_dir):
    """Let torchvision fetch what is missing; keep its chatter out of the user's log. A failed download
    leaves no empty folders behind (a mistyped --data_dir leaves no empty MNIST/raw tree)."""
    made = [d for d in (data_dir, os.path.join(data_dir, "MNIST"), raw_folder(data_dir)) if not os.path.exists(d)]
    try:
        import torchvision
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            torchvision.datasets.MNIST(data_dir, train=True, download=True)
    except Exception:  # no network, a refused mirror, a read-only folder: all end in the message below
        pass
    if _missing(data_dir):
        for d in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(d)  # only if still empty
        names = ", ".join(name for name, _, _ in FILES)
        raise MNISTError(
            f"MNIST is not in {raw_folder(data_dir)} and could not be downloaded; "
            f"put the four uncompressed IDX files there ({names}) or pass --data_dir a folder holding MNIST/raw"
        )


def check_idx(path, magic, ndim):
    """Check an IDX file's header against its size; raise MNISTError naming the file if it is malformed."""
    size = os.path.getsize(path)
    header = 4 * (ndim + 1)
    with open(path, "rb") as f:
        head = f.read(header)
    if len(head) < header or int.from_bytes(head[:4], "big") != magic:
        raise MNISTError(f"{path} is not an MNIST IDX file (bad header); replace it with the original file")
    dims = [int.from_bytes(head[4 * (i + 1):4 * (i + 2)], "big") for i in range(ndim)]
    expected = header + dims[0] * (IMAGE_SIZE * IMAGE_SIZE if ndim == 3 else 1)
    if ndim == 3 and dims[1:] != [IMAGE_SIZE, IMAGE_SIZE]:
        raise MNISTError(f"{path} holds {dims[1]}x{dims[2]} images, not 28x28")
    if size != expected:
        raise MNISTError(f"{path} is truncated or malformed: {size} bytes where its header promises {expected}")
    return dims[0]


def load_mnist(data_dir, device, binarize=False):
    """Load MNIST from data_dir (downloading if missing) and split it as the original, on device.

    binarize: the test and validation images are binarized once with BINARIZE_SEED; the training images
    stay grey, to be binarized afresh in every batch.
    """
    for folder in (data_dir, os.path.join(data_dir, "MNIST"), raw_folder(data_dir)):
        if os.path.lexists(folder) and not os.path.isdir(folder):
            raise MNISTError(f"{folder} is {what_is(folder)}, not a folder; --data_dir names the folder holding "
                             f"MNIST/raw")
    for name, _, _ in FILES:
        path = os.path.join(raw_folder(data_dir), name)
        if os.path.lexists(path) and not os.path.isfile(path):
            raise MNISTError(f"{path} is {what_is(path)}, not an IDX file; replace it with the original file")
    if _missing(data_dir):
        _download(data_dir)
    counts = [check_idx(os.path.join(raw_folder(data_dir), name), magic, ndim) for name, magic, ndim in FILES]
    if counts[0] != counts[1] or counts[2] != counts[3]:
        raise MNISTError(f"{raw_folder(data_dir)}: image and label files disagree on the number of examples")
    if counts[2] == 0:
        raise MNISTError(f"{os.path.join(raw_folder(data_dir), FILES[2][0])} holds no images; "
                         f"replace it with the original file")
    if counts[0] <= VALIDATION_SIZE:
        raise MNISTError(f"{raw_folder(data_dir)}: the training file needs more than {VALIDATION_SIZE} images")

    import torch
    train_x, train_y = (torch.from_numpy(a) for a in read_pair(data_dir, 0))
    test_x, test_y = (torch.from_numpy(a) for a in read_pair(data_dir, 2))
    train_x, test_x = (x.reshape(len(x), -1).float().div_(255.0) for x in (train_x, test_x))
    train_y, test_y = train_y.long(), test_y.long()
    valid_x = train_x[:VALIDATION_SIZE]
    if binarize:  # on the CPU with its own generator, so the same binary images on every device
        fixed = torch.Generator().manual_seed(BINARIZE_SEED)
        test_x, valid_x = bernoulli(test_x, fixed), bernoulli(valid_x, fixed)
    return MNIST(*(t.to(device) for t in (train_x[VALIDATION_SIZE:], train_y[VALIDATION_SIZE:],
                                          valid_x, train_y[:VALIDATION_SIZE], test_x, test_y)))


def read_idx(path, magic, ndim):
    """The uint8 array of an IDX file, its header checked against its size."""
    import numpy as np
    count = check_idx(path, magic, ndim)
    cells = IMAGE_SIZE * IMAGE_SIZE if ndim == 3 else 1
    try:
        with open(path, "rb") as f:
            f.seek(4 * (ndim + 1))
            data = np.fromfile(f, dtype=np.uint8, count=count * cells)
    except MemoryError:
        raise MNISTError(f"{path} ({os.path.getsize(path) / 1e9:.3g} GB) does not fit in the memory there is; "
                         f"replace it with the original file") from None
    if data.size != count * cells:
        raise MNISTError(f"{path} changed while it was read; run again")
    return data.reshape(count, IMAGE_SIZE, IMAGE_SIZE) if ndim == 3 else data


def read_pair(data_dir, first):
    """The images and labels of FILES[first] and FILES[first + 1]; labels outside 0-9 are an MNISTError."""
    (images, image_magic, image_dims), (labels, label_magic, label_dims) = FILES[first:first + 2]
    x = read_idx(os.path.join(raw_folder(data_dir), images), image_magic, image_dims)
    y = read_idx(os.path.join(raw_folder(data_dir), labels), label_magic, label_dims)
    if len(y) and int(y.max()) > 9:
        raise MNISTError(f"{os.path.join(raw_folder(data_dir), labels)} holds labels outside 0-9 "
                         f"({int(y.min())} to {int(y.max())}); replace it with the original file")
    return x, y


def bernoulli(x, generator=None):
    """Binarize grey levels: each pixel is 1 with probability its value in [0, 1], else 0."""
    import torch
    return torch.bernoulli(x, generator=generator)


def salt_and_pepper(x, generator=None):
    """The original's noise, x * m1 + m2 with Bernoulli(1/2) masks, not clamped: values lie in [0, 2]."""
    import torch
    m1 = torch.randint(0, 2, x.shape, generator=generator, device=x.device, dtype=x.dtype)
    m2 = torch.randint(0, 2, x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x.mul(m1).add_(m2)


def num_batches(n, batch_size):
    """Batches per epoch, floor(n / batch_size), as the original."""
    return n // batch_size


def batches(x, batch_size, add_noise=False, binarize=False, labels=None):
    """Yield (x_hat, x, y) slices of a fresh permutation of x, binarized afresh when binarize; x_hat carries
    noise when add_noise; y the batch's labels (None without labels)."""
    import torch
    perm = torch.randperm(len(x), device=x.device)
    for i in range(num_batches(len(x), batch_size)):
        rows = perm[i * batch_size:(i + 1) * batch_size]
        batch = x[rows]
        if binarize:
            batch = bernoulli(batch)
        yield (salt_and_pepper(batch) if add_noise else batch), batch, None if labels is None else labels[rows]
