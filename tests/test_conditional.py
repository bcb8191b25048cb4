"""The conditional VAE (--conditional True): the label reaches both networks, its pictures (a manifold per
digit, analogies), interpolation for both kinds of model, the labels= API, and their usage errors."""
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image
from test_run_main import epochs_printed, metrics, one_line_error, run, weights, without_seconds

import cli
import mnist_data
import plot_utils
import results_folder
import training
import vae
from config import VAEConfig
from conftest import FAST, N_TEST, checkpoint_file, picture, usage_error

torch.manual_seed(0)


def conditional(dim_z=2, n_hidden=16, **kwargs):
    torch.manual_seed(0)
    return vae.VAE(VAEConfig(dim_z, n_hidden, conditional=True, **kwargs)).eval()


def images(n, seed=0):
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(seed))


# the model

def test_the_label_reaches_the_encoder_and_the_decoder():
    model = conditional()
    z, x = torch.randn(4, 2), images(4)
    assert not torch.allclose(model.decode(z, labels=3), model.decode(z, labels=8))
    assert not torch.allclose(model.encode(x, labels=3)[0], model.encode(x, labels=8)[0])
    plain = vae.VAE(VAEConfig(2, 16))
    assert plain.encoder.net[0].in_features == 784 and plain.decoder.net[0].in_features == 2


def test_the_conditional_networks_widths_follow_the_authors_cvae():
    model = conditional(dim_z=5, n_hidden=16)
    first, second = model.encoder.net[0], model.encoder.net[3]
    assert (first.in_features, first.out_features, second.in_features) == (784 + 10, 16 + 10, 16 + 10)
    assert model.decoder.net[0].in_features == 5 + 10 and model.decoder.net[0].out_features == 16
    for kind in (False, True):
        built = vae.VAE(VAEConfig(5, 16, conditional=kind))
        assert sum(p.numel() for p in built.parameters()) == VAEConfig(5, 16, conditional=kind).parameter_count()


def test_labels_are_digits_one_digit_for_all_or_one_hot_rows():
    model = conditional()
    z = torch.randn(3, 2)
    expected = model.decode(z, labels=torch.tensor([1, 4, 9]))
    one_hot = torch.nn.functional.one_hot(torch.tensor([1, 4, 9]), 10)
    for same in ([1, 4, 9], (1, 4, 9), np.array([1, 4, 9]), torch.tensor([1.0, 4.0, 9.0]), one_hot, one_hot.float()):
        assert torch.equal(model.decode(z, labels=same), expected)
    assert torch.equal(model.decode(z, labels=7), model.decode(z, labels=[7, 7, 7]))
    bad = {"ten": 10, "negative": [-1, 0, 0], "too few": [1, 2], "not whole": [1.5, 2, 3], "bool": True,
           "not one-hot": one_hot * 2, "two ones": one_hot + torch.nn.functional.one_hot(torch.tensor([0, 0, 0]), 10),
           "text": "seven", "nan": [float("nan"), 1, 2], "bool tensor": torch.ones(3, dtype=torch.bool)}
    for name, labels in bad.items():
        with pytest.raises(ValueError, match="expected labels"):
            model.decode(z, labels=labels)
        assert name


def test_a_conditional_model_needs_labels_and_a_plain_one_refuses_them():
    model, plain, x, z = conditional(), vae.VAE(VAEConfig(2, 16)).eval(), images(2), torch.randn(2, 2)
    calls = {"encode": lambda m, **k: m.encode(x, **k), "decode": lambda m, **k: m.decode(z, **k),
             "reconstruct": lambda m, **k: m.reconstruct(x, **k), "sample": lambda m, **k: m.sample(2, **k),
             "interpolate": lambda m, **k: m.interpolate(x, x, 3, **k)}
    for name, call in calls.items():
        with pytest.raises(ValueError, match="this model is conditional"):
            call(model)
        with pytest.raises(ValueError, match="this model is not conditional"):
            call(plain, labels=(1, 2) if name == "interpolate" else 1)
        got = call(model, labels=(1, 2) if name == "interpolate" else 1)
        assert (got[0] if name == "encode" else got).shape[-1] in (2, 784), name


def test_ten_sevens_are_drawn_and_are_the_decoded_prior_samples():
    model = conditional()
    sevens = model.sample(10, generator=torch.Generator().manual_seed(4), labels=7)
    z = torch.randn(10, 2, generator=torch.Generator().manual_seed(4))
    assert sevens.shape == (10, 784) and torch.equal(sevens, model.decode(z, labels=7))


def test_the_iwae_bound_decodes_each_sample_with_its_own_images_label():
    model = conditional(dim_z=3)
    x, y = (images(4) > 0.5).float(), torch.tensor([0, 3, 3, 9])
    mu, sigma = model.encoder(x, y)
    eps = torch.randn(5, 4, 3)
    log_px_z, _, _ = vae.log_weights(model.decoder, x, mu, sigma, eps, y=y)
    one_by_one = torch.stack([-vae.neg_log_likelihood(model.decoder(mu + sigma * e, y), x) for e in eps])
    assert torch.allclose(log_px_z, one_by_one, atol=1e-4)
    assert model.loss(x, x, k=5, y=y)[1].item() > 0  # the IWAE bound of a conditional model


def test_a_conditional_model_trains_on_labelled_batches():
    model = conditional(dim_z=2).train()
    optimizer = training.adam(model, 1e-3)
    x, y = (images(64) > 0.5).float(), torch.arange(64) % 10
    first = training.train_epoch(model, optimizer, [(x, x, y)]).loss
    last = training.train_epoch(model, optimizer, [(x, x, y)] * 40).loss
    assert last < first
    with pytest.raises(ValueError, match="needs the label"):
        training.train_epoch(model, optimizer, [(x, x, None)])


# interpolation

def test_interpolation_runs_from_one_mean_to_the_other():
    torch.manual_seed(0)
    model = vae.VAE(VAEConfig(2, 16)).eval()
    a, b = images(3, 1), images(3, 2)
    path = model.interpolate(a, b, 5)
    mu_a, mu_b = model.encode(a)[0], model.encode(b)[0]
    assert path.shape == (3, 5, 784)
    assert torch.allclose(path[:, 0], model.decode(mu_a), atol=1e-6)
    assert torch.allclose(path[:, -1], model.decode(mu_b), atol=1e-6)
    assert torch.allclose(path[:, 2], model.decode((mu_a + mu_b) / 2), atol=1e-6)
    for steps in (1, 0, 2.0, True):
        with pytest.raises(ValueError, match="steps"):
            model.interpolate(a, b, steps)
    with pytest.raises(ValueError, match="as many images"):
        model.interpolate(a, b[:2], 4)


def test_a_conditional_interpolation_changes_the_label_halfway():
    model = conditional()
    a, b = images(2, 1), images(2, 2)
    y_a, y_b = torch.tensor([1, 2]), torch.tensor([7, 8])
    path = model.interpolate(a, b, 4, labels=(y_a, y_b))
    mu_a, mu_b = model.encode(a, labels=y_a)[0], model.encode(b, labels=y_b)[0]
    for i, t in enumerate((0, 1 / 3, 2 / 3, 1)):
        z = mu_a + t * (mu_b - mu_a)
        assert torch.allclose(path[:, i], model.decode(z, labels=y_a if t < 0.5 else y_b), atol=1e-5), i
    with pytest.raises(ValueError, match="labels=\\(labels_a, labels_b\\)"):
        model.interpolate(a, b, 4, labels=y_a)


# the command line

def test_usage_errors_of_the_conditional_pictures(capsys):
    cases = {("--PARR", "True"): "--PARR True needs --conditional True",
             ("--conditional", "True", "--PMLR", "True", "--dim_z", "5"): "--PMLR True needs --dim_z 2 (got 5)",
             ("--PIR", "True", "--PIR_n_img_x", "1"): "--PIR_n_img_x must be from 2",
             ("--PIR", "True", "--PIR_n_img_y", "5001", "--PIR_resize_factor", "0.1"): "pairs need 10002 test images",
             ("--conditional", "True", "--PARR", "True", "--PARR_n_img_y", "10001", "--PARR_resize_factor", "0.1"):
                 "more than the 10000 test",
             ("--conditional", "True", "--PARR", "True", "--PARR_resize_factor", "0.01"): "smaller than one pixel",
             ("--conditional", "maybe"): "expected True or False",
             ("--PIR", "True", "--PIR_n_img_x", "65499"): "--PIR image would be"}
    for argv, needle in cases.items():
        assert needle in usage_error(capsys, list(argv)), argv


def test_the_analogy_and_interpolation_grids_count_their_fixed_columns():
    grids = cli.parse_args(["--conditional", "True", "--PARR", "True", "--PIR", "True", "--PIR_n_img_x", "6",
                            "--PARR_n_img_y", "3"]).grids
    assert (grids["PARR"].n_x, grids["PARR"].n_y) == (11, 3)
    assert (grids["PIR"].n_x, grids["PIR"].n_y) == (8, 10)


# whole runs

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


def test_a_conditional_run_resumes_exactly_and_keeps_its_kind(cvae_run, mnist_dir, tmp_path, capsys):
    results, _ = cvae_run
    straight = run(*CVAE_2D, "--num_epochs", "3", "--iw_train", "2", "--results_path", tmp_path / "straight")
    assert straight.status == 0, straight.stderr
    first = run(*CVAE_2D, "--num_epochs", "2", "--iw_train", "2", "--results_path", tmp_path / "resumed")
    assert first.status == 0, first.stderr
    # --conditional comes from the checkpoint
    resumed = run("--num_epochs", "3", *FAST, "--resume", tmp_path / "resumed" / "checkpoint.pt")
    assert resumed.status == 0, resumed.stderr
    assert resumed.stdout.count("epoch 2: -L_2 ") == 1 and "is now" not in resumed.stdout
    assert without_seconds(metrics(tmp_path / "resumed")) == without_seconds(metrics(tmp_path / "straight"))
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    err = usage_error(capsys, ["--resume", os.path.join(results, "checkpoint.pt"), "--conditional", "False"])
    assert "--conditional False differs from the checkpoint's True" in err


def test_a_plain_checkpoint_stays_plain_and_refuses_the_analogies(mnist_dir, tmp_path, capsys):
    checkpoint_file(str(tmp_path), vae.VAE(VAEConfig(2, 16)))
    path = str(tmp_path / "checkpoint.pt")
    assert cli.parse_args(["--resume", path]).settings.conditional is False
    assert "--PARR True needs --conditional True" in usage_error(capsys, ["--resume", path, "--PARR", "True"])
    assert "differs from the checkpoint's False" in usage_error(capsys, ["--resume", path, "--conditional", "True"])
    assert vae.load(path).conditional is False
    raw = torch.load(path, weights_only=True)
    del raw["model_args"]["conditional"]  # as a checkpoint saved before the flag existed
    torch.save(raw, path)
    assert cli.parse_args(["--resume", path]).settings.conditional is False and vae.load(path).conditional is False


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


def test_a_conditional_denoising_run_restores_with_the_labels(mnist_dir, tmp_path):
    done = run(*CVAE_2D, "--add_noise", "True", "--num_epochs", "1", "--results_path", tmp_path)
    assert done.status == 0, done.stderr
    assert "denoising: mean absolute error" in done.stdout


def test_a_conditional_picture_without_test_images_is_one_line(mnist_dir, tmp_path):
    done = run(*CVAE_2D, "--PIR", "True", "--PIR_n_img_y", str(N_TEST // 2 + 1), "--num_epochs", "1",
               "--results_path", tmp_path / "r")
    one_line_error(done, 2, f"the plots need {N_TEST + 2} test images")
    assert not os.path.exists(tmp_path / "r")


def test_a_fresh_run_moves_every_picture_of_a_conditional_run_aside(cvae_run, mnist_dir, tmp_path):
    import shutil
    results, _ = cvae_run
    folder = tmp_path / "R"
    shutil.copytree(results, folder)
    (folder / "PMLR_epoch_01_33.jpg").write_text("mine")
    before = sorted(os.listdir(folder))
    done = run("--num_epochs", "1", *FAST, "--results_path", folder)
    assert done.status == 0, done.stderr
    moved = sorted(os.listdir(folder / "previous_run_1"))
    assert "PMLR_epoch_01_3.jpg" in moved and "PARR_epoch_01.jpg" in moved and "PIR_epoch_00.jpg" in moved
    assert moved == [name for name in before if name not in ("PMLR_epoch_01_33.jpg", results_folder.LOCK_NAME)]
    assert (folder / "PMLR_epoch_01_33.jpg").read_text() == "mine"
    assert not results_folder.is_output("PMLR_epoch_01_33.jpg") and not results_folder.is_output("PARR_epoch_1.jpg")


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


def test_odd_inputs_to_the_labels_and_the_interpolation():
    model = conditional()
    z = torch.randn(3, 2)
    expected = model.decode(z, labels=[1, 4, 9])
    for dtype in (torch.uint16, torch.uint32, torch.uint64, torch.int16):
        assert torch.equal(model.decode(z, labels=torch.tensor([1, 4, 9]).to(dtype)), expected), dtype
    assert torch.equal(model.decode(z, labels=np.array([1, 4, 9], dtype=np.uint64)), expected)
    for n_zero in (lambda: model.sample(0, labels=11), lambda: model.encode(torch.rand(0, 784), labels=11)):
        with pytest.raises(ValueError, match="expected labels"):
            n_zero()
    empty = torch.rand(0, 784)
    assert model.interpolate(empty, empty, 5, labels=(1, 2)).shape == (0, 5, 784)
    assert vae.VAE(VAEConfig(2, 16)).interpolate(empty, empty, 5).shape == (0, 5, 784)
    with pytest.raises(ValueError, match="memory"):
        model.interpolate(empty, empty, 10**15, labels=(1, 2))
