"""The checks of what a user hands the model's API (vae.load, encode, decode, reconstruct, sample, interpolate):
each argument is checked where it enters and copied into a form the model owns; ValueError says what was
expected and what was given."""
import operator

import torch

import hardware
from config import DIM_IMG
from mnist_data import IMAGE_SIZE, NUM_LABELS

MAX_PIXEL = 2.0  # the original's salt-and-pepper inputs x * m1 + m2 reach 2
DEVICE_TYPES = ("cpu", "cuda", "mps")  # the devices the model runs on


def as_device(device):
    """A device the model can run on, as a torch.device; ValueError for a name torch does not know, one this
    product does not run on (meta, xla, xpu, ...) or one this machine lacks."""
    want = "a device such as 'cpu' or 'cuda'"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"expected {want}, got {device!r}") from None
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"expected {want}, got {str(device)!r}: the model runs on {', '.join(DEVICE_TYPES)}")
    missing = hardware.missing_device(device.type)
    if missing:
        raise ValueError(f"device {device}: {missing}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {device}: there are {torch.cuda.device_count()} CUDA devices")
    return device


def whole_number(n, what, low):
    """n as an int of at least low (a bool is not one); ValueError saying what was expected otherwise."""
    try:
        n = operator.index(n) if not isinstance(n, bool) else None
    except TypeError:
        n = None
    if n is None or n < low:
        raise ValueError(f"expected {what}")
    return n


def is_dense(t):
    """Whether t is an ordinary tensor with values (not sparse, nested, quantized or on the meta device)."""
    return (isinstance(t, torch.Tensor) and t.layout == torch.strided and not t.is_nested and not t.is_quantized
            and t.device.type != "meta")


def described(x):
    """What was given, for a message: its type, and a tensor's dtype."""
    return type(x).__name__ + (f" of {x.dtype}" if isinstance(x, torch.Tensor) else "")


def as_rows(x, device):
    """Images as float32 (N, 784) rows on device: accepts (N, 784), (N, 28, 28) and (N, 1, 28, 28) with pixel
    values in [0, 1] (noisy inputs up to 2); ValueError otherwise."""
    if not is_dense(x) or not x.is_floating_point():
        raise ValueError(f"expected a dense floating-point tensor of images, got {described(x)}")
    shapes = ((DIM_IMG,), (IMAGE_SIZE, IMAGE_SIZE), (1, IMAGE_SIZE, IMAGE_SIZE))
    if x.dim() < 2 or tuple(x.shape[1:]) not in shapes:
        raise ValueError(f"expected images of shape (N, 784), (N, 28, 28) or (N, 1, 28, 28), got {tuple(x.shape)}")
    if len(x) and not (bool(torch.isfinite(x).all()) and 0 <= x.min().item() and x.max().item() <= MAX_PIXEL):
        raise ValueError(f"expected pixel values in [0, {MAX_PIXEL:g}] (images in [0, 1], noisy inputs up to "
                         f"{MAX_PIXEL:g}), got values from {x.min().item()!r} to {x.max().item()!r}")
    return x.reshape(len(x), DIM_IMG).to(device=device, dtype=torch.float32)  # float64/16 become float32


def as_latents(z, dim_z, device):
    """Latent vectors as float32 (N, dim_z) rows on device; ValueError for anything else or a non-finite value."""
    if not is_dense(z) or not z.is_floating_point():
        raise ValueError(f"expected a floating-point tensor of latent vectors, got {described(z)}")
    if z.dim() != 2 or z.shape[1] != dim_z:
        raise ValueError(f"expected latent vectors of shape (N, {dim_z}), got {tuple(z.shape)}")
    if not bool(torch.isfinite(z).all()):
        raise ValueError("expected finite latent vectors, got NaN or infinity")
    return z.to(device=device, dtype=torch.float32)


def as_labels(labels, n, device):
    """Labels of n inputs as (n,) int64 digits on device, from one digit for all, n digits (a sequence or an
    integer tensor) or n one-hot rows (N, 10); ValueError for anything else."""
    want = f"labels: a digit 0 to 9, {n} of them, or {n} one-hot rows of {NUM_LABELS}"
    if isinstance(labels, bool):
        raise ValueError(f"expected {want}, got {labels!r}")
    if not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise ValueError(f"expected {want}, got {type(labels).__name__}") from None
    if not is_dense(labels) or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"expected {want}, got a tensor of {labels.dtype}")
    # float64 or int64, whose operations every device has (uint64 beyond 2**63 wraps negative: refused below)
    labels = labels.double() if labels.is_floating_point() else labels.long()
    if labels.dim() == 2 and tuple(labels.shape) == (n, NUM_LABELS):  # one-hot: a single 1 in each row
        if not bool(((labels == 0) | (labels == 1)).all() and (labels.sum(1) == 1).all()):
            raise ValueError(f"expected {want}; these rows are not one-hot")
        labels = labels.argmax(1)
    if labels.dim() > 1 or (labels.dim() == 1 and len(labels) != n):
        raise ValueError(f"expected {want}, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise ValueError(f"expected {want}; got values that are not whole")
    if labels.numel() and not bool(((labels >= 0) & (labels < NUM_LABELS)).all()):
        raise ValueError(f"expected {want}; got values from {labels.min().item()!r} to {labels.max().item()!r}")
    return labels.expand(n).to(device=device, dtype=torch.int64).clone(memory_format=torch.contiguous_format)


def labels_for(conditional, labels, n, device):
    """The labels of n inputs as (n,) int64 on device, or None for a plain model; ValueError when a conditional
    model has none, a plain one is given some, or they are not n digits."""
    if conditional and labels is None:
        raise ValueError("this model is conditional (--conditional True): give labels=, digits 0 to 9")
    if not conditional:
        if labels is not None:
            raise ValueError("this model is not conditional: labels= is only for a model trained with "
                             "--conditional True")
        return None
    return as_labels(labels, n, device)


def check_room(n, config, device):
    """ValueError when decoding n images would not fit in the device's free memory: their latent vectors and
    labels, the decoder's two hidden layers, its logits and the pixels returned, in float32."""
    need = 4 * n * (config.dim_z + NUM_LABELS + 2 * config.n_hidden + 2 * DIM_IMG)
    hardware.check_memory(need, f"decoding {n} images", device.type)


def as_generator(generator, device):
    """A generator on the model's device, or None; ValueError for anything else."""
    if generator is not None and not (isinstance(generator, torch.Generator)
                                      and generator.device.type == device.type):
        raise ValueError(f"expected a torch.Generator on the model's device ({device.type}), got {generator!r}")
    return generator
