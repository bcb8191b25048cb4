"""Pictures: image grids (PRR, PMLR, PRS), the labelled latent scatter and the loss curve. No display needed.

Each writer takes a path or a binary file object. matplotlib and scipy are imported by the functions that draw
with them, so that the command line can check a grid's size at once.
"""
import numpy as np
from PIL import Image

from mnist_data import IMAGE_SIZE

JPEG_MAX_SIDE = 65500  # libjpeg's largest side (its format field would hold 65,535)


def cell_size(resize_factor):
    """Side in pixels of one resized 28x28 cell, int(28 * resize_factor) as the original."""
    return int(IMAGE_SIZE * resize_factor)


CHUNK_BYTES = 64 * 2**20  # the working set of a grid drawn a few rows at a time: decoded pixels and resized cells


def grid_bytes(n_img_x, n_img_y, resize_factor):
    """Memory that drawing one grid takes, about: the 8-bit canvas, the JPEG it encodes to (up to three quarters
    of the canvas for decoded digits at quality 95: 0.71 for 600x600 prior samples), and the bounded working set
    of its rows. A 600x600 grid of 28-pixel cells measured 562 MB over the run's own memory; this gives 560 MB."""
    side = cell_size(resize_factor)
    return (7 * n_img_x * n_img_y * side * side) // 4 + CHUNK_BYTES


def rows_per_chunk(n_img_x, resize_factor, bytes_per_image):
    """How many of a grid's rows to draw at once so that their images (bytes_per_image each while decoded) and
    their resized cells stay within CHUNK_BYTES (at least one row)."""
    per_image = bytes_per_image + cell_size(resize_factor) ** 2
    return max(1, CHUNK_BYTES // (per_image * n_img_x))


class Canvas:
    """A grid of n_img_y rows x n_img_x 28x28 images as one 8-bit canvas, filled a few rows at a time, cells
    resized bicubically to int(28 * resize_factor) pixels a side."""

    def __init__(self, n_img_x, n_img_y, resize_factor=1.0):
        self.n_x, self.n_y, self.side = n_img_x, n_img_y, cell_size(resize_factor)
        self.pixels = np.zeros((n_img_y * self.side, n_img_x * self.side), dtype=np.uint8)

    def paste(self, row, images, low=0.0, high=1.0):
        """Put whole rows of images (values low..high mapped to 0..255), starting at grid row `row`."""
        images = np.asarray(images, dtype=np.float32).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
        rows = len(images) // self.n_x
        if low != 0.0 or high != 1.0:
            images = (images - low) / (high - low if high > low else 1.0)
        cells = np.clip(images * 255.0 + 0.5, 0, 255).astype(np.uint8)[:rows * self.n_x]
        if self.side != IMAGE_SIZE:
            cells = np.stack([np.asarray(Image.fromarray(c).resize((self.side, self.side), Image.BICUBIC))
                              for c in cells])
        block = cells.reshape(rows, self.n_x, self.side, self.side).transpose(0, 2, 1, 3)
        self.pixels[row * self.side:(row + rows) * self.side] = block.reshape(rows * self.side, -1)

    def save(self, path):
        """Write the canvas as a grey-scale JPEG (PIL shares the canvas's memory, it does not copy it)."""
        Image.fromarray(self.pixels).save(path, format="JPEG", quality=95)


def merge(images, n_img_x, n_img_y, resize_factor=1.0, stretch=False):
    """Tile n_img_y rows x n_img_x columns of 28x28 images into one uint8 canvas, cells resized bicubically.

    Values in [0, 1] map to 0..255; stretch maps the grid's minimum..maximum there instead, as the
    original's image writer did (for noisy inputs, whose pixels reach 2).
    """
    images = np.asarray(images, dtype=np.float32)
    canvas = Canvas(n_img_x, n_img_y, resize_factor)
    canvas.paste(0, images[:n_img_x * n_img_y], *((images.min(), images.max()) if stretch else ()))
    return canvas.pixels


def save_grid(path, images, n_img_x, n_img_y, resize_factor=1.0, stretch=False):
    """Write images as one grey-scale JPEG grid (PRR inputs and reconstructions, PMLR manifolds, PRS samples)."""
    Image.fromarray(merge(images, n_img_x, n_img_y, resize_factor, stretch)).save(path, format="JPEG", quality=95)


def manifold_z(n_img_x, n_img_y, z_range, grid="linear"):
    """Latent grid of n_img_y x n_img_x points, row-major, first row z1 = max (the original's mgrid).

    linear spans [-z_range, z_range]; gaussian sits at the standard normal's quantiles of (i + 0.5) / n,
    as Figure 4 of Kingma & Welling, and ignores z_range.
    """
    if grid == "linear":
        z1, z2 = np.linspace(z_range, -z_range, n_img_y), np.linspace(z_range, -z_range, n_img_x)
    elif grid == "gaussian":
        from scipy.stats import norm
        z1, z2 = (norm.ppf((np.arange(n) + 0.5) / n)[::-1] for n in (n_img_y, n_img_x))
    else:
        raise ValueError(f"unknown grid {grid!r}")
    return np.stack(np.meshgrid(z1, z2, indexing="ij"), axis=-1).reshape(-1, 2).astype(np.float32)


def scatter_limit(z_grid):
    """Half-width of the latent map's axes: the manifold grid's extent plus 2, the original's z_range + 2."""
    return float(np.abs(z_grid).max()) + 2.0


def save_scatter(path, z, labels, limit):
    """Scatter of 2-D latent points coloured by digit (10-colour map, colour bar), axes [-limit, limit]."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 6))
    ax = fig.subplots()
    points = ax.scatter(z[:, 0], z[:, 1], c=labels, marker="o", edgecolor="none", s=12,
                        cmap=colormaps["jet"].resampled(10), vmin=-0.5, vmax=9.5)
    fig.colorbar(points, ax=ax, ticks=range(10))
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_xlabel("z1 (mean)")
    ax.set_ylabel("z2 (mean)")
    ax.grid(True)
    fig.savefig(path, format="jpg", pil_kwargs={"quality": 95})


def save_loss_curve(path, epochs, train_loss, test_loss):
    """Train and test -ELBO per epoch as a line plot."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(epochs, train_loss, marker="o", label="train -ELBO (epoch mean, dropout on)")
    ax.plot(epochs, test_loss, marker="o", label="test -ELBO (no dropout)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("-ELBO (nats per image)")
    ax.legend()
    ax.grid(True)
    fig.tight_layout()
    fig.savefig(path, format="png")
