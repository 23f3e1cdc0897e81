"""Tests for tfvae.data: offline loading, fixed splits, idx parsing, binarization, pipelines."""

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf

from tfvae import data

FASHION_DIR = data.FASHION_MNIST_SYSTEM_DIR


def write_idx(path, array, magic=None):
    """Writes `array` (uint8) as a gzipped idx file, with the standard magic unless told otherwise."""
    array = np.asarray(array, dtype=np.uint8)
    magic = bytes([0, 0, 8, array.ndim]) if magic is None else magic
    header = magic + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def write_idx_dir(directory, n_train=12, n_test=6, skip=None):
    rng = np.random.default_rng(0)
    os.makedirs(directory, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": np.arange(n_test) % 10,
    }
    for name, array in arrays.items():
        if name != skip:
            write_idx(os.path.join(directory, name), array)
    return arrays


def epoch(ds):
    return np.concatenate([b.numpy() for b in ds])


# Loading


def test_digits_shapes_range_and_fixed_split():
    d = data.load("digits")
    assert d.x_train.shape == (1500, 8, 8, 1) and d.x_test.shape == (297, 8, 8, 1)
    assert len(d.x_train) + len(d.x_test) == 1797
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    again = data.load("digits")
    np.testing.assert_array_equal(d.x_test, again.x_test)
    np.testing.assert_array_equal(d.y_train, again.y_train)
    x, y = data.load("digits", split="test")
    np.testing.assert_array_equal(x, d.x_test)
    np.testing.assert_array_equal(y, d.y_test)


def test_mnist_5k_shapes_and_balanced_split():
    d = data.load("mnist-5k")
    assert d.x_train.shape == (4000, 28, 28, 1) and d.x_test.shape == (1000, 28, 28, 1)
    assert 0.0 <= d.x_train.min() and d.x_train.max() == 1.0
    np.testing.assert_array_equal(np.bincount(d.y_train), [400] * 10)
    np.testing.assert_array_equal(np.bincount(d.y_test), [100] * 10)


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason=f"{FASHION_DIR} absent")
def test_fashion_mnist_from_system_dir(monkeypatch):
    monkeypatch.delenv("TFVAE_DATA_DIR", raising=False)
    d = data.load("fashion_mnist")
    assert d.x_train.shape == (60000, 28, 28, 1) and d.x_test.shape == (10000, 28, 28, 1)
    assert d.y_train.shape == (60000,) and d.y_test.shape == (10000,)
    assert d.x_train.dtype == np.float32 and 0.0 <= d.x_train.min() and d.x_train.max() == 1.0
    np.testing.assert_array_equal(np.bincount(d.y_test), [1000] * 10)


def test_idx_directory_missing_a_file_names_it(tmp_path):
    write_idx_dir(tmp_path, skip="t10k-labels-idx1-ubyte.gz")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz") as info:
        data.load("fashion_mnist", data_dir=tmp_path)
    assert str(tmp_path) in str(info.value)


def test_data_dir_and_env_var_are_honoured(tmp_path, monkeypatch):
    arrays = write_idx_dir(tmp_path / "mnist", n_train=12, n_test=6)
    d = data.load("mnist", data_dir=tmp_path)  # the dataset's own subdirectory is found
    assert d.x_train.shape == (12, 28, 28, 1) and d.x_test.shape == (6, 28, 28, 1)
    np.testing.assert_allclose(d.x_test[..., 0], arrays["t10k-images-idx3-ubyte.gz"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d.y_train, np.arange(12) % 10)

    write_idx_dir(tmp_path / "env", n_train=7, n_test=3)
    monkeypatch.setenv("TFVAE_DATA_DIR", str(tmp_path / "env"))
    assert data.load("fashion_mnist").x_train.shape == (7, 28, 28, 1)
    os.remove(tmp_path / "env" / "train-images-idx3-ubyte.gz")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz"):
        data.load("mnist")  # an explicit directory never falls back to a download


def test_read_idx_rejects_bad_magic_and_bad_length(tmp_path):
    write_idx(tmp_path / "bad.gz", np.zeros((2, 3, 3)), magic=b"\x00\x00\x09\x03")
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(tmp_path / "bad.gz")
    with open(tmp_path / "short", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + np.asarray([5], ">u4").tobytes() + b"\x01\x02")
    with pytest.raises(ValueError, match="need 5 bytes; got 2"):
        data.read_idx(tmp_path / "short")


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="name_or_path") as info:
        data.load("cifar")
    for name in data.DATASETS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="split"):
        data.load("digits", split="validation")


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        data.load(str(tmp_path / "nope.npz"))


def test_npz_with_splits_scales_uint8(tmp_path):
    path = tmp_path / "d.npz"
    x_train = np.full((4, 5, 5), 255, np.uint8)
    np.savez(path, x_train=x_train, x_test=np.zeros((2, 5, 5), np.uint8), y_train=[0, 1, 2, 3])
    d = data.load(path)
    assert d.x_train.shape == (4, 5, 5, 1) and d.x_train.dtype == np.float32
    assert d.x_train.max() == 1.0 and d.x_test.max() == 0.0
    np.testing.assert_array_equal(d.y_train, [0, 1, 2, 3])
    assert d.y_test is None


def test_single_array_files_split_last_sixth(tmp_path):
    x = np.linspace(-2.0, 3.0, 12 * 4, dtype=np.float32).reshape(12, 4)
    np.save(tmp_path / "x.npy", x)
    d = data.load(tmp_path / "x.npy")
    assert d.x_train.shape == (10, 4) and d.x_test.shape == (2, 4) and d.y_train is None
    np.testing.assert_array_equal(d.x_test, x[10:])  # floats outside [0, 1] are kept as they are
    np.savez(tmp_path / "a.npz", x)
    assert data.load(tmp_path / "a.npz").x_test.shape == (2, 4)
    np.savez(tmp_path / "xy.npz", x=x, y=np.arange(12))
    np.testing.assert_array_equal(data.load(tmp_path / "xy.npz").y_test, [10, 11])


def test_npz_rejects_nan_out_of_range_ints_and_wrong_keys(tmp_path):
    x = np.zeros((12, 3, 3), np.float32)
    x[5, 1, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(ValueError, match="NaN or inf"):
        data.load(tmp_path / "nan.npy")
    np.save(tmp_path / "int.npy", np.full((12, 3), 300, np.int32))
    with pytest.raises(ValueError, match="0..255"):
        data.load(tmp_path / "int.npy")
    np.savez(tmp_path / "keys.npz", images=np.zeros((12, 3)))
    with pytest.raises(ValueError, match="images"):
        data.load(tmp_path / "keys.npz")


def test_flatten():
    assert data.flatten(np.zeros((5, 28, 28, 1))).shape == (5, 784)


# Binarization and pipelines


def test_binarize_static_is_reproducible_and_bernoulli():
    x = np.random.default_rng(1).uniform(size=(200, 50)).astype(np.float32)
    a, b = data.binarize_static(x, seed=7), data.binarize_static(x, seed=7)
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {0.0, 1.0}
    assert not np.array_equal(a, data.binarize_static(x, seed=8))
    sigma = np.sqrt((x * (1 - x)).sum()) / x.size  # std of the mean of independent Bernoulli(x) draws
    assert abs(a.mean() - x.mean()) < 4 * sigma
    with pytest.raises(ValueError, match=r"x: expected probabilities in \[0, 1\]"):
        data.binarize_static(x + 1.0, seed=0)


def test_dynamic_binarization_mean_epochs_and_seed():
    x = data.load("digits").x_train  # 1500 x 64 grey levels
    ds = data.make_dataset(x, batch_size=256, binarization="dynamic", shuffle=False, seed=3)
    first, second = epoch(ds), epoch(ds)
    assert first.shape == x.shape and first.dtype == np.float32
    assert set(np.unique(first)) == {0.0, 1.0}
    sigma = np.sqrt((x * (1 - x)).sum()) / x.size
    assert abs(first.mean() - x.mean()) < 4 * sigma
    assert abs(second.mean() - x.mean()) < 4 * sigma
    # A pixel of grey level p is 1 with probability p: where x is 0 or 1 the draw equals x.
    np.testing.assert_array_equal(first[(x == 0) | (x == 1)], x[(x == 0) | (x == 1)])
    assert (first != second).mean() > 0.05  # epoch 2 draws anew
    again = data.make_dataset(x, batch_size=256, binarization="dynamic", shuffle=False, seed=3)
    np.testing.assert_array_equal(epoch(again), first)


def test_shuffle_with_labels_is_seeded_and_reshuffles():
    x = np.arange(40, dtype=np.float32).reshape(40, 1) / 40
    labels = np.arange(40)
    ds = data.make_dataset(x, 8, binarization="dynamic", seed=5, labels=labels, drop_remainder=True)
    batches = list(ds)
    assert len(batches) == 5 and batches[0][0].shape == (8, 1) and batches[0][1].shape == (8,)
    order1 = np.concatenate([y.numpy() for _, y in batches])
    order2 = np.concatenate([y.numpy() for _, y in ds])
    assert sorted(order1) == list(range(40)) and not np.array_equal(order1, order2)
    fresh = data.make_dataset(x, 8, binarization="dynamic", seed=5, labels=labels)
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in fresh]), order1)


@pytest.mark.parametrize("drop_remainder, sizes", [(False, [4, 4, 2]), (True, [4, 4])])
def test_each_epoch_is_a_permutation_in_batches(drop_remainder, sizes):
    x, labels = np.full((10, 2), 0.5, dtype=np.float32), np.arange(10)
    ds = data.make_dataset(x, 4, seed=1, labels=labels, drop_remainder=drop_remainder)
    assert int(ds.cardinality()) == len(sizes)
    for _ in range(3):
        batches = [y.numpy() for _, y in ds]
        assert [len(b) for b in batches] == sizes
        seen = np.concatenate(batches)
        assert len(set(seen)) == sum(sizes)  # no example twice in an epoch
        if not drop_remainder:
            assert sorted(seen) == list(range(10))


def test_static_and_plain_pipelines():
    x = np.random.default_rng(2).uniform(size=(30, 6)).astype(np.float32)
    ds = data.make_dataset(x, 7, binarization="static", shuffle=False, seed=11)
    np.testing.assert_array_equal(epoch(ds), data.binarize_static(x, seed=11))
    np.testing.assert_array_equal(epoch(ds), epoch(ds))  # the same draw every epoch
    assert [len(b) for b in ds] == [7, 7, 7, 7, 2]
    np.testing.assert_array_equal(epoch(data.make_dataset(x * 5, 7, shuffle=False)), x * 5)


@pytest.mark.parametrize("binarization", data.BINARIZATIONS)
def test_pipeline_runs_on_the_asking_thread(binarization):
    # No prefetch or parallel stage and no autotuner: their threads cost fit ~0.5 s in 15-40% of
    # its epochs on 2 cores (see data._untuned_options).
    x = np.full((30, 4), 0.5, dtype=np.float32)
    ds = data.make_dataset(x, 8, binarization=binarization, seed=0, labels=np.arange(30))
    ops = {node.op for node in tf.compat.v1.GraphDef.FromString(ds._as_serialized_graph().numpy()).node}
    assert not ops & {"PrefetchDataset", "ParallelMapDatasetV2", "ParallelBatchDataset"}
    assert ds.options().autotune.enabled is False
    assert int(ds.cardinality()) == 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"binarization": "stochastic"}, "binarization: expected one of .*got 'stochastic'"),
        ({"batch_size": 0}, "batch_size: expected an integer >= 1; got 0"),
        ({"batch_size": 2.5}, "batch_size: expected an integer >= 1; got 2.5"),
        ({"x": np.zeros((0, 4))}, "x: expected at least one example"),
        ({"x": np.full((3, 4), 1.5), "binarization": "dynamic"}, r"x: expected probabilities in \[0, 1\]"),
        ({"x": np.full((3, 4), np.inf)}, "x: expected finite values"),
        ({"labels": np.arange(2)}, "labels: expected 3 labels"),
        ({"seed": "a"}, "seed: expected an int or None"),
    ],
)
def test_make_dataset_rejects_bad_arguments(kwargs, match):
    args = {"x": np.full((3, 4), 0.5), "batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        data.make_dataset(**args)


@pytest.mark.parametrize("labels, message", [
    # A cast cut 1.7 to class 1 without a word, and NaN to -2**63 ("got -9223372036854775808 to 9").
    (np.arange(12) % 10 + 0.7, "(y): expected whole-number class labels; got 12 that are not, the first 0.7 (label 0)"),
    (np.where(np.arange(12) == 3, np.nan, np.arange(12) % 10),
     "(y): expected whole-number class labels; got 1 that are not, the first nan (label 3)"),
    (np.array(["a"] * 12), "(y): expected whole-number class labels; got labels of dtype <U1"),
])
def test_labels_that_are_not_whole_numbers_are_refused(tmp_path, labels, message):
    np.savez(tmp_path / "labels.npz", x=np.zeros((12, 3, 3), np.float32), y=labels)
    with pytest.raises((ValueError, TypeError)) as error:
        data.load(tmp_path / "labels.npz")
    assert message in str(error.value)
    np.savez(tmp_path / "whole.npz", x=np.zeros((12, 3, 3), np.float32), y=(np.arange(12) % 10).astype(np.float64))
    np.testing.assert_array_equal(data.load(tmp_path / "whole.npz").y_train, np.arange(10) % 10)
