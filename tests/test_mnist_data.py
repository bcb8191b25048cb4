"""mnist_data: IDX loading from small files the tests write, the split, batches, noise, clear errors."""
import os
import re
import shutil

import pytest
import torch

import mnist_data
import run_main
from conftest import N_TEST, N_TRAIN, synthetic_digits, write_mnist


def test_load_shapes_range_and_split(mnist_dir):
    data = mnist_data.load_mnist(mnist_dir, torch.device("cpu"))
    assert data.train_x.shape == (N_TRAIN - 5000, 784) and data.valid_x.shape == (5000, 784)
    assert data.test_x.shape == (N_TEST, 784)
    assert data.train_y.shape == (N_TRAIN - 5000,) and data.test_y.shape == (N_TEST,)
    for x in (data.train_x, data.valid_x, data.test_x):
        assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert data.train_y.dtype == torch.int64
    images, labels = synthetic_digits(N_TRAIN, 0)
    # validation is the first 5,000 training images, training the rest, in file order
    assert torch.equal(data.valid_x[0], torch.from_numpy(images[0]).reshape(784).float() / 255)
    assert torch.equal(data.train_x[0], torch.from_numpy(images[5000]).reshape(784).float() / 255)
    assert torch.equal(data.train_y, torch.from_numpy(labels[5000:]).long())


def copy_of(mnist_dir, tmp_path):
    target = tmp_path / "mnist"
    shutil.copytree(mnist_dir, target)
    return str(target)


def test_truncated_file_is_named(mnist_dir, tmp_path):
    data_dir = copy_of(mnist_dir, tmp_path)
    path = os.path.join(mnist_data.raw_folder(data_dir), "t10k-images-idx3-ubyte")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(mnist_data.MNISTError, match="t10k-images-idx3-ubyte is truncated"):
        mnist_data.load_mnist(data_dir, torch.device("cpu"))


def test_file_with_a_wrong_header_is_named(mnist_dir, tmp_path):
    data_dir = copy_of(mnist_dir, tmp_path)
    path = os.path.join(mnist_data.raw_folder(data_dir), "train-labels-idx1-ubyte")
    with open(path, "r+b") as f:
        f.write(b"GIF8")
    with pytest.raises(mnist_data.MNISTError, match="train-labels-idx1-ubyte is not an MNIST IDX file"):
        mnist_data.load_mnist(data_dir, torch.device("cpu"))


def test_missing_files_without_network_name_folder_and_files(tmp_path, no_download):
    with pytest.raises(mnist_data.MNISTError) as error:
        mnist_data.load_mnist(str(tmp_path / "empty"), torch.device("cpu"))
    message = str(error.value)
    assert mnist_data.raw_folder(str(tmp_path / "empty")) in message
    for name, _, _ in mnist_data.FILES:
        assert name in message
    assert "\n" not in message


def test_cli_missing_data_is_one_line_and_exit_1(tmp_path, no_download, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        run_main.main(["--data_dir", str(tmp_path / "nothing"), "--results_path", str(results)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "t10k-labels-idx1-ubyte" in err
    assert (results / "keep.txt").read_text() == "mine"


def test_too_few_training_images_is_clear(tmp_path):
    data_dir = write_mnist(tmp_path, n_train=5000, n_test=10)
    with pytest.raises(mnist_data.MNISTError, match="more than 5000"):
        mnist_data.load_mnist(data_dir, torch.device("cpu"))


def test_test_files_with_no_images_are_named(tmp_path):
    data_dir = write_mnist(tmp_path, n_test=0)
    with pytest.raises(mnist_data.MNISTError, match="t10k-images-idx3-ubyte holds no images"):
        mnist_data.load_mnist(data_dir, torch.device("cpu"))


def test_a_mistyped_data_dir_leaves_no_empty_folders(tmp_path, no_download):
    (tmp_path / "exists").mkdir()
    for data_dir in (tmp_path / "typo", tmp_path / "exists"):
        with pytest.raises(mnist_data.MNISTError):
            mnist_data.load_mnist(str(data_dir), torch.device("cpu"))
    assert sorted(os.listdir(tmp_path)) == ["exists"] and os.listdir(tmp_path / "exists") == []


def test_salt_and_pepper_is_the_originals_unclamped_masks():
    n = 200_000
    g = torch.Generator().manual_seed(0)
    from_zero, from_one = mnist_data.salt_and_pepper(torch.zeros(n), g), mnist_data.salt_and_pepper(torch.ones(n), g)
    # x * m1 + m2 with m1, m2 independent Bernoulli(1/2): from 0 it is m2; from 1 it is 0, 1, 2 with 1/4, 1/2, 1/4
    assert set(from_zero.unique().tolist()) == {0.0, 1.0}
    assert abs(from_zero.mean().item() - 0.5) < 0.01
    assert set(from_one.unique().tolist()) == {0.0, 1.0, 2.0}
    for value, share in ((0.0, 0.25), (1.0, 0.5), (2.0, 0.25)):
        assert abs((from_one == value).float().mean().item() - share) < 0.01
    grey = torch.full((n,), 0.5)
    noisy = mnist_data.salt_and_pepper(grey, g)
    assert set(noisy.unique().tolist()) == {0.0, 0.5, 1.0, 1.5}  # dropped or kept, plus 0 or 1
    assert torch.equal(mnist_data.salt_and_pepper(grey, torch.Generator().manual_seed(5)),
                       mnist_data.salt_and_pepper(grey, torch.Generator().manual_seed(5)))


def test_binarized_test_set_is_bernoulli_of_the_grey_levels_and_fixed(mnist_dir):
    grey = mnist_data.load_mnist(mnist_dir, torch.device("cpu"))
    torch.manual_seed(1)
    binary = mnist_data.load_mnist(mnist_dir, torch.device("cpu"), binarize=True)
    torch.manual_seed(2)  # the global seed (--seed) does not change the binary test images
    again = mnist_data.load_mnist(mnist_dir, torch.device("cpu"), binarize=True)
    assert torch.equal(binary.test_x, again.test_x) and torch.equal(binary.valid_x, again.valid_x)
    assert set(binary.test_x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(binary.train_x, grey.train_x)  # training images stay grey, binarized per batch
    assert torch.equal(binary.test_y, grey.test_y)
    # pixels that are 0 or 1 stay so; the mean is preserved (5,000 x 784 validation pixels)
    assert torch.all(binary.valid_x[grey.valid_x == 0] == 0) and torch.all(binary.valid_x[grey.valid_x == 1] == 1)
    assert abs(binary.valid_x.mean().item() - grey.valid_x.mean().item()) < 0.002


def test_bernoulli_preserves_the_mean():
    grey = torch.rand(500, 784)
    binary = mnist_data.bernoulli(grey, torch.Generator().manual_seed(0))
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    assert abs(binary.mean().item() - grey.mean().item()) < 0.003
    # each pixel is 1 with probability its grey level: high levels come out 1 far more often
    assert binary[grey > 0.9].mean() > 0.85 and binary[grey < 0.1].mean() < 0.15


def test_binarized_batches_are_drawn_afresh_each_epoch():
    x = torch.full((256, 784), 0.5)
    first = torch.cat([b for _, b, _ in mnist_data.batches(x, 64, binarize=True)])
    second = torch.cat([b for _, b, _ in mnist_data.batches(x, 64, binarize=True)])
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)
    assert abs(first.mean().item() - 0.5) < 0.01
    for x_hat, target, _ in mnist_data.batches(x, 64, add_noise=True, binarize=True):
        assert set(target.unique().tolist()) == {0.0, 1.0}
        assert set(x_hat.unique().tolist()) <= {0.0, 1.0, 2.0}  # the noise applies to the binary image
        assert torch.all(x_hat[target == 1] >= 0) and torch.all(x_hat[target == 0] <= 1)


def test_labels_outside_0_to_9_are_a_data_error(mnist_dir, tmp_path):
    data_dir = copy_of(mnist_dir, tmp_path)
    path = os.path.join(mnist_data.raw_folder(data_dir), "t10k-labels-idx1-ubyte")
    with open(path, "r+b") as f:
        f.seek(8 + 3)
        f.write(bytes([12]))
    with pytest.raises(mnist_data.MNISTError, match="t10k-labels-idx1-ubyte holds labels outside 0-9"):
        mnist_data.load_mnist(data_dir, torch.device("cpu"))


def test_batches_are_a_permutation_in_floor_n_over_b_slices():
    x = torch.arange(1000, dtype=torch.float32).unsqueeze(1).repeat(1, 3)
    got = list(mnist_data.batches(x, 128))
    assert len(got) == 1000 // 128 == mnist_data.num_batches(1000, 128)
    seen = torch.cat([b[:, 0] for _, b, _ in got])
    assert len(seen) == 7 * 128 and len(seen.unique()) == len(seen)
    assert all(x_hat is b for x_hat, b, _ in got)
    assert not torch.equal(seen, torch.arange(len(seen), dtype=torch.float32))  # shuffled


def test_noisy_batches_keep_the_clean_target():
    x = torch.full((256, 784), 0.5)
    for x_hat, target, _ in mnist_data.batches(x, 64, add_noise=True):
        assert torch.equal(target, torch.full((64, 784), 0.5))
        assert not torch.equal(x_hat, target)
        assert set(x_hat.unique().tolist()) <= {0.0, 0.5, 1.0, 1.5}


def test_a_folder_in_place_of_a_data_file_is_named(mnist_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(mnist_dir, data)
    target = os.path.join(mnist_data.raw_folder(str(data)), "t10k-labels-idx1-ubyte")
    os.remove(target)
    os.mkdir(target)
    with pytest.raises(mnist_data.MNISTError, match=re.escape(f"{target} is a folder, not an IDX file")):
        mnist_data.load_mnist(str(data), torch.device("cpu"))
