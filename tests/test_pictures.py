"""pictures.py: the pictures a run draws, their fixed inputs, and what each grid holds."""
import io
import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

import mnist_data
import plot_utils
import vae
from conftest import (
    CVAE_2D,
    DENOISING_2D,
    FAST,
    N_TEST,
    ROOT,
    epochs_printed,
    metrics,
    one_line_error,
    picture,
    run,
    with_data,
    without_seconds,
)


def grid_jpeg(images):
    buffer = io.BytesIO()
    plot_utils.save_grid(buffer, images, 10, 10)
    return buffer.getvalue()


def test_noisy_input_picture_is_stretched_from_its_minimum_to_its_maximum(first_run):
    results, _ = first_run
    clean = np.asarray(Image.open(os.path.join(results, "input.jpg")), dtype=float)
    noisy = np.asarray(Image.open(os.path.join(results, "input_noise.jpg")), dtype=float)
    assert np.abs(clean - noisy).mean() > 50
    # values 0..2 drawn 0..255: salt on the background (1) is mid-grey, salt on a bright stroke (2) white
    background = clean < 30
    assert 100 < np.median(noisy[background & (noisy > 60)]) < 160
    assert noisy[clean > 240].max() > 240


def test_prior_samples_are_the_same_z_every_epoch_and_leave_training_alone(first_run, mnist_dir, tmp_path):
    results, _ = first_run
    again = run(*DENOISING_2D, "--num_epochs", "2", *FAST, "--results_path", tmp_path / "again")
    assert again.status == 0, again.stderr
    assert without_seconds(metrics(tmp_path / "again")) == without_seconds(metrics(results))  # --PRS True or not
    assert not any(name.startswith("PRS_") for name in os.listdir(tmp_path / "again"))
    model = vae.load(os.path.join(results, "checkpoint.pt"))
    z = torch.randn(100, 2, generator=torch.Generator().manual_seed(1))
    expected = np.asarray(Image.open(os.path.join(results, "PRS_epoch_01.jpg")), dtype=float)
    drawn = np.asarray(Image.open(io.BytesIO(grid_jpeg(model.decode(z)))), dtype=float)
    assert np.abs(expected - drawn).max() < 3  # the decoded z of generator seed --seed, JPEG aside


def test_a_conditional_run_draws_a_manifold_per_digit_and_its_analogies(cvae_run):
    results, done = cvae_run
    assert epochs_printed(done.stdout) == [0, 1]
    assert "test log p(x|y) >= -" in done.stdout
    sizes = {**{f"PMLR_epoch_01_{digit}.jpg": (4 * 28, 3 * 28) for digit in range(10)},
             "PMLR_map_epoch_01.jpg": (800, 600), "PARR_epoch_01.jpg": (11 * 28, 3 * 28),
             "PIR_epoch_01.jpg": (7 * 28, 2 * 28), "PRS_epoch_01.jpg": (280, 280), "PRR_epoch_01.jpg": (280, 280)}
    for name, size in sizes.items():
        with Image.open(os.path.join(results, name)) as img:
            assert img.size == size, name
    assert not os.path.exists(os.path.join(results, "PMLR_epoch_01.jpg"))
    manifolds = [picture(results, f"PMLR_epoch_01_{digit}.jpg") for digit in range(10)]
    assert all(np.abs(manifolds[0] - m).mean() > 1 for m in manifolds[1:])  # each digit its own manifold
    checkpoint = torch.load(os.path.join(results, "checkpoint.pt"), weights_only=True)
    assert checkpoint["model_args"]["conditional"] is True


def test_the_analogies_are_the_test_images_then_their_z_as_each_digit(cvae_run, mnist_dir):
    results, _ = cvae_run
    model = vae.load(os.path.join(results, "checkpoint.pt"))
    data = mnist_data.load_mnist(mnist_dir, torch.device("cpu"))
    x, y = data.test_x[:3], data.test_y[:3]
    z = model.encode(x, labels=y)[0]
    rows = [torch.cat((x[i:i + 1], model.decode(z[i].expand(10, 2), labels=torch.arange(10)))) for i in range(3)]
    buffer = io.BytesIO()
    plot_utils.save_grid(buffer, torch.cat(rows), 11, 3)
    drawn = np.asarray(Image.open(buffer), dtype=float)
    assert np.abs(picture(results, "PARR_epoch_01.jpg") - drawn).max() < 3  # JPEG aside


def test_interpolation_pairs_are_fixed_by_the_seed_and_leave_training_alone(mnist_dir, tmp_path):
    common = ["--dim_z", "3", "--num_epochs", "2", *FAST]
    with_pir = run(*common, "--PIR", "True", "--PIR_n_img_y", "4", "--results_path", tmp_path / "pir")
    without = run(*common, "--results_path", tmp_path / "plain")
    assert with_pir.status == 0 and without.status == 0, with_pir.stderr + without.stderr
    assert without_seconds(metrics(tmp_path / "pir")) == without_seconds(metrics(tmp_path / "plain"))
    data = mnist_data.load_mnist(mnist_dir, torch.device("cpu"))
    pairs = torch.randperm(N_TEST, generator=torch.Generator().manual_seed(1))[:8]
    a, b = data.test_x[pairs[0::2]], data.test_x[pairs[1::2]]
    model = vae.load(str(tmp_path / "pir" / "checkpoint.pt"))
    buffer = io.BytesIO()
    plot_utils.save_grid(buffer, torch.cat((a[:, None], model.interpolate(a, b, 10), b[:, None]), 1), 12, 4)
    assert np.abs(picture(tmp_path / "pir", "PIR_epoch_01.jpg") - np.asarray(Image.open(buffer), dtype=float)).max() < 3
    assert picture(tmp_path / "pir", "PIR_epoch_00.jpg").shape == (4 * 28, 12 * 28)


def test_a_resume_that_only_draws_draws_without_dropout(cvae_run, mnist_dir, tmp_path):
    import shutil
    results, _ = cvae_run
    folder = tmp_path / "R"
    shutil.copytree(results, folder)
    before = {name: (folder / name).read_bytes() for name in ("PMLR_epoch_01_3.jpg", "PARR_epoch_01.jpg")}
    done = run("--num_epochs", "2", *FAST, "--PRR", "False", "--PMLR", "True", "--PMLR_n_img_x", "4",
               "--PMLR_n_img_y", "3", "--PARR", "True", "--PARR_n_img_y", "3", "--resume", folder / "checkpoint.pt")
    assert done.status == 0, done.stderr
    for name, drawn in before.items():  # decoding the means is deterministic: the same pictures again
        assert (folder / name).read_bytes() == drawn, name


def test_a_conditional_picture_without_test_images_is_one_line(mnist_dir, tmp_path):
    done = run(*CVAE_2D, "--PIR", "True", "--PIR_n_img_y", str(N_TEST // 2 + 1), "--num_epochs", "1",
               "--results_path", tmp_path / "r")
    one_line_error(done, 2, f"the plots need {N_TEST + 2} test images")
    assert not os.path.exists(tmp_path / "r")


def peak_kilobytes(*runs):
    """The peak resident memory (kB) of a run_main.py process for each argument list, the processes run side by
    side, each read by a parent process of its own."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    children = [subprocess.Popen([sys.executable, "-c", code, sys.executable, os.path.join(ROOT, "run_main.py"),
                                  *with_data(args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for args in runs]
    peaks = []
    for child in children:
        stdout, stderr = child.communicate(timeout=240)
        assert child.returncode == 0, stderr
        peaks.append(int(stdout))
    return peaks


def test_a_large_grid_is_drawn_in_the_memory_its_check_counts(small_run, tmp_path):
    """The grid's canvas is filled a few rows at a time: the memory over a run that draws nothing is within
    the check's estimate (a whole-grid float array, as the pictures were once drawn, would take 4 times more)."""
    resume = ["--resume", small_run / "checkpoint.pt", "--PRR", "False", *FAST]
    base, grid = peak_kilobytes([*resume, "--results_path", tmp_path / "none"],
                                [*resume, "--PRS", "True", "--PRS_n_img_x", "200", "--PRS_n_img_y", "200",
                                 "--results_path", tmp_path / "prs"])
    canvas = (200 * 28) ** 2
    assert (grid - base) * 1024 <= plot_utils.grid_bytes(200, 200, 1.0), (grid - base, canvas)
    assert (grid - base) * 1024 < 4 * canvas  # the float32 pixels of the whole grid alone would be 4 canvases
