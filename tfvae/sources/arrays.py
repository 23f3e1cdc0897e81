"""`.npy` and `.npz` arrays, memory-mapped: each batch is gathered from the file and converted on its own.

A uint8 array of 600,000 28x28 images is 470 MB on disk and 1.9 GB as float32; read whole and
converted it took 8.2 GB at its peak. Mapped, what the process holds is a batch (the file's pages
are the kernel's cache, shared and dropped under pressure).
"""

import struct
import zipfile

import numpy as np
import tensorflow as tf

from tfvae import data
from tfvae.sources import stream

CHUNK_BYTES = 64 * 2**20  # values checked at a time when the file is opened
_SCALES = {np.dtype(np.uint16): 65535.0}  # integer pixels of any other type must be 0..255


class ArrayFile(stream.Source):
    """An `.npy` (one array) or `.npz` (`x_train`/`x_test`, or `x` or `arr_0`, with labels `y`,
    `y_train`/`y_test`); a single array's last N // 6 rows are the test split, as `tfvae.data.load`."""

    kind = "array"

    def __init__(self, path):
        self.path = path
        arrays = _mapped(path)
        if "x_train" in arrays and "x_test" in arrays:
            self._x = {"train": arrays["x_train"], "test": arrays["x_test"]}
            self._y = {"train": arrays.get("y_train"), "test": arrays.get("y_test")}
            self.split_rule = "x_train and x_test"
        else:
            key = next((k for k in ("x", "arr_0") if k in arrays), None)
            if key is None:
                raise ValueError(f"{path}: expected arrays x_train and x_test, or a single x or arr_0; "
                                 f"got {sorted(arrays)}.")
            x, y = arrays[key], arrays.get("y")
            if len(x) < 6:
                raise ValueError(f"{path}: expected at least 6 examples to split off a test set; got {len(x)}.")
            cut = len(x) - len(x) // 6
            self._x = {"train": x[:cut], "test": x[cut:]}
            self._y = {"train": None if y is None else y[:cut], "test": None if y is None else y[cut:]}
            self.split_rule = "the last N // 6 rows"
        shapes = set()
        for split in ("train", "test"):
            self._x[split] = _checked(self._x[split], f"{path} ({split})")
            shapes.add(_event_shape(self._x[split]))
            if self._y[split] is not None:
                self._y[split] = data._labels(np.asarray(self._y[split]), f"{path} (labels of {split})")
                if len(self._y[split]) != len(self._x[split]):
                    raise ValueError(f"{path}: expected one label per example of {split} ({len(self._x[split])}); "
                                     f"got {len(self._y[split])} labels.")
        if len(shapes) != 1:
            raise ValueError(f"{path}: expected train and test examples of one shape; got {sorted(shapes)}.")
        self.event_shape = shapes.pop()
        labelled = [y for y in self._y.values() if y is not None]
        if labelled and len(labelled) != 2:
            raise ValueError(f"{path}: expected labels for both splits or for neither; got them for one.")
        self.classes = int(max(y.max(initial=-1) for y in labelled)) + 1 if labelled else None
        if self.classes is not None and min(y.min(initial=0) for y in labelled) < 0:
            raise ValueError(f"{path}: expected class labels >= 0; got {min(y.min() for y in labelled)}.")

    def size(self, split):
        return len(self._x["train"]) + len(self._x["test"]) if split == "all" else len(self._x[split])

    def _batches(self, split, batch_size, pair, shard, drop_remainder):
        parts = ("train", "test") if split == "all" else (split,)
        x = self._x["train"] if split == "train" else self._x["test"]
        if split == "all":
            x = _Joined(self._x["train"], self._x["test"])
        ys = [self._y[p] for p in parts]
        y = None if ys[0] is None else np.concatenate(ys)
        offset = 0 if split != "test" else len(self._x["train"])  # ids are rows of train then test
        scale = _SCALES.get(x.dtype, 255.0) if np.issubdtype(x.dtype, np.integer) else None
        event_shape = self.event_shape

        def gather(rows):
            batch = x[np.sort(rows)]  # sorted: one pass over the mapped file
            batch = batch[np.argsort(np.argsort(rows))]  # back to the epoch's order
            values = batch.astype(np.float32) if scale is None else batch.astype(np.float32) / np.float32(scale)
            labels = np.full(len(rows), -1, np.int64) if y is None else y[rows]
            return values.reshape(len(rows), *event_shape), labels

        def load(rows):
            values, labels = tf.numpy_function(gather, [rows], (tf.float32, tf.int64), stateful=False)
            values.set_shape((None, *event_shape))
            labels.set_shape((None,))
            return values, rows + offset, labels

        rows = stream.ordered(self.size(split), pair, shard)
        return tf.data.Dataset.from_tensor_slices(rows).batch(batch_size, drop_remainder).map(load)


class _Joined:
    """Two mapped arrays read as one (train rows, then test rows), without copying either."""

    def __init__(self, first, second):
        self.first, self.second = first, second
        self.dtype = first.dtype

    def __getitem__(self, rows):
        cut = len(self.first)
        return np.concatenate([self.first[rows[rows < cut]], self.second[rows[rows >= cut] - cut]])


def _mapped(path):
    """The file's arrays by name, memory-mapped where they can be."""
    try:
        if path.endswith(".npy"):
            return {"x": np.load(path, mmap_mode="r", allow_pickle=False)}
        with zipfile.ZipFile(path) as archive:
            members = {info.filename[: -len(".npy")]: info for info in archive.infolist()
                       if info.filename.endswith(".npy")}
        return {name: _mapped_member(path, info) for name, info in members.items()}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: cannot read it as a numpy file ({e}).") from None


def _mapped_member(path, info):
    """One array of an `.npz`: mapped where it is stored uncompressed (np.savez), read whole otherwise."""
    if info.compress_type != zipfile.ZIP_STORED:
        with np.load(path, allow_pickle=False) as f:
            return f[info.filename[: -len(".npy")]]
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the zip local file header; its name and extra field follow
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        shape, fortran_order, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0(f))
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{info.filename} holds Python objects, not numbers")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran_order else "C", offset=offset)


def _checked(x, source):
    """x, after checking a chunk at a time that its values are what `tfvae.data.load` accepts."""
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.issubdtype(x.dtype, np.complexfloating):
        raise TypeError(f"{source}: expected numeric data; got dtype {x.dtype}.")
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"{source}: expected images (N, H, W), (N, H, W, C) or rows (N, D); got shape {x.shape}.")
    if len(x) == 0:
        raise ValueError(f"{source}: expected at least one example; got none.")
    rows = max(1, CHUNK_BYTES // max(1, x[0].nbytes))
    full_scale = _SCALES.get(x.dtype, 255)
    for start in range(0, len(x), rows):
        chunk = np.asarray(x[start:start + rows])
        if np.issubdtype(x.dtype, np.integer):
            if chunk.min() < 0 or chunk.max() > full_scale:
                raise ValueError(f"{source}: expected integer pixels in 0..{full_scale}; got "
                                 f"{chunk.min()}..{chunk.max()} "
                                 f"in rows {start}..{start + len(chunk) - 1}.")
        elif x.dtype != bool:
            finite = np.isfinite(chunk)
            too_large = np.abs(np.where(finite, chunk, 0)) > np.finfo(np.float32).max
            if not finite.all() or too_large.any():
                row = start + int(np.argmax(~(finite & ~too_large).reshape(len(chunk), -1).all(axis=1)))
                raise ValueError(f"{source}: expected finite values within float32's range; row {row} has "
                                 f"{int((~finite).sum() + too_large.sum())} that are not.")
    return x


def _event_shape(x):
    return tuple(x.shape[1:]) + ((1,) if x.ndim == 3 else ())
