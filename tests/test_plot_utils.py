"""plot_utils: grid sizes and placement, the manifold grid's corners, scatter and loss files."""
import numpy as np
import pytest
from PIL import Image
from scipy.stats import norm

import plot_utils


def constant_images(n):
    """Image i is the constant (i + 1) / (n + 1), so each cell's place can be read back."""
    return np.repeat(((np.arange(n) + 1) / (n + 1))[:, None], 784, axis=1)


@pytest.mark.parametrize("factor,side", [(1.0, 28), (1.5, 42), (0.5, 14), (2.0, 56)])
def test_grid_size_follows_the_resize_factor(tmp_path, factor, side):
    path = tmp_path / "grid.jpg"
    plot_utils.save_grid(path, constant_images(6), n_img_x=3, n_img_y=2, resize_factor=factor)
    with Image.open(path) as img:
        assert img.format == "JPEG" and img.mode == "L"
        assert img.size == (3 * side, 2 * side)


def test_default_grids_are_280_and_560_pixels(tmp_path):
    plot_utils.save_grid(tmp_path / "prr.jpg", constant_images(100), 10, 10)
    plot_utils.save_grid(tmp_path / "pmlr.jpg", constant_images(400), 20, 20)
    assert Image.open(tmp_path / "prr.jpg").size == (280, 280)
    assert Image.open(tmp_path / "pmlr.jpg").size == (560, 560)


def test_cells_are_row_major():
    canvas = plot_utils.merge(constant_images(6), n_img_x=3, n_img_y=2)
    for i in range(6):
        row, col = divmod(i, 3)
        cell = canvas[row * 28:(row + 1) * 28, col * 28:(col + 1) * 28]
        assert np.all(cell == round((i + 1) / 7 * 255))


def test_linear_manifold_matches_the_originals_mgrid():
    z = plot_utils.manifold_z(n_img_x=5, n_img_y=4, z_range=2.0)
    original = np.rollaxis(np.mgrid[2.0:-2.0:4 * 1j, 2.0:-2.0:5 * 1j], 0, 3).reshape(-1, 2)
    assert z.shape == (20, 2)
    assert np.allclose(z, original)
    assert np.allclose(z[[0, 4, 15, 19]], [[2, 2], [2, -2], [-2, 2], [-2, -2]])  # the four corners


def test_gaussian_manifold_sits_at_normal_quantiles():
    z = plot_utils.manifold_z(n_img_x=20, n_img_y=10, z_range=7.0, grid="gaussian")
    edge_y, edge_x = norm.ppf(1 - 0.5 / 10), norm.ppf(1 - 0.5 / 20)
    assert np.allclose(z[0], [edge_y, edge_x], atol=1e-6)
    assert np.allclose(z[-1], [-edge_y, -edge_x], atol=1e-6)
    column = z[:20, 1]
    assert np.all(np.diff(column) < 0)  # descending, like the linear grid
    assert np.allclose(norm.cdf(column[::-1]), (np.arange(20) + 0.5) / 20, atol=1e-6)
    steps = -np.diff(column)
    assert steps[9] < steps[0]  # denser near the mode
    with pytest.raises(ValueError):
        plot_utils.manifold_z(2, 2, 1.0, grid="polar")


def test_scatter_axes_follow_the_grid():
    assert plot_utils.scatter_limit(plot_utils.manifold_z(20, 20, 2.0)) == pytest.approx(4.0)  # the original's
    gaussian = plot_utils.manifold_z(20, 20, 2.0, grid="gaussian")
    assert plot_utils.scatter_limit(gaussian) == pytest.approx(norm.ppf(1 - 0.5 / 20) + 2, abs=1e-5)


def test_scatter_and_loss_curve_files(tmp_path):
    rng = np.random.default_rng(0)
    plot_utils.save_scatter(tmp_path / "map.jpg", rng.normal(size=(300, 2)), rng.integers(0, 10, 300), limit=4.0)
    plot_utils.save_loss_curve(tmp_path / "loss.png", [0, 1, 2], [200.0, 150.0, 140.0], [190.0, 160.0, 150.0])
    with Image.open(tmp_path / "map.jpg") as img:
        assert img.format == "JPEG" and img.size == (800, 600)
        # the 10-colour map shows: a colour bar on the right with saturated colours
        assert np.asarray(img.convert("HSV"))[..., 1].max() > 200
    with Image.open(tmp_path / "loss.png") as img:
        assert img.format == "PNG"


def test_stretch_maps_the_grids_minimum_and_maximum_to_black_and_white():
    noisy = np.zeros((4, 784))
    noisy[0] = 2.0  # a pixel of the digit under salt: 1 + 1
    noisy[1] = 1.0  # salt on the background
    noisy[2] = 0.5
    canvas = plot_utils.merge(noisy, 2, 2, stretch=True)
    cells = [canvas[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28] for r in range(2) for c in range(2)]
    assert [int(cell.max()) for cell in cells] == [255, 128, 64, 0]  # 2 -> 255, 1 -> half, 0 -> 0
    plain = plot_utils.merge(noisy, 2, 2)  # unstretched grids clip at 1
    assert plain.max() == 255 and np.all(plain[:28, 28:] == 255)
    flat = plot_utils.merge(np.full((4, 784), 0.3), 2, 2, stretch=True)  # a constant grid stays black
    assert np.all(flat == 0)


def test_grids_write_to_a_file_object(tmp_path):
    import io
    buffer = io.BytesIO()
    plot_utils.save_grid(buffer, constant_images(4), 2, 2)
    buffer.seek(0)
    with Image.open(buffer) as img:
        assert img.format == "JPEG" and img.size == (56, 56)
    assert plot_utils.grid_bytes(10, 10, 2.0) == 7 * 100 * 56 * 56 // 4 + plot_utils.CHUNK_BYTES


def test_a_canvas_filled_a_few_rows_at_a_time_is_the_grid_drawn_at_once():
    images = np.random.default_rng(0).random((6 * 5, 784)).astype(np.float32) * 2
    for factor in (1.0, 1.5):
        canvas = plot_utils.Canvas(5, 6, factor)
        for row in range(0, 6, 4):
            canvas.paste(row, images[row * 5:min(row + 4, 6) * 5], images.min(), images.max())
        assert np.array_equal(canvas.pixels, plot_utils.merge(images, 5, 6, factor, stretch=True))
    assert plot_utils.rows_per_chunk(5, 1.0, 10**9) == 1  # at least one row, however large an image
    assert plot_utils.rows_per_chunk(10, 1.0, 1000) == plot_utils.CHUNK_BYTES // ((1000 + 784) * 10)
