"""The bundled datasets as sources: small enough to hold, so read whole and batched by one gather each."""

import numpy as np

from tfvae import data
from tfvae.sources import stream


class Bundled(stream.Source):
    """`digits`, `mnist-5k`, `fashion_mnist` or `mnist`, through `tfvae.data.load` and `make_dataset`: the
    same batches, draws and numbers as before sources existed. Their binarized test split is the one
    fixed draw `tfvae.data.binarize_static` makes of the whole split."""

    kind = "bundled"

    def __init__(self, name, data_dir=None):
        self.path = name
        self.arrays = data.load(name, data_dir=data_dir)
        self.event_shape = tuple(self.arrays.x_train.shape[1:])
        self.split_rule = "the dataset's own"
        labels = [y for y in (self.arrays.y_train, self.arrays.y_test) if y is not None]
        self.classes = max(int(y.max()) + 1 for y in labels) if labels else None

    def size(self, split):
        return len(self._x(split))

    def dataset(self, split="train", batch_size=32, binarization=None, shuffle=True, seed=None, labels=None,
                shard=None, drop_remainder=False):
        """`tfvae.data.make_dataset` of the split; see `Source.dataset` for the arguments. Every worker
        reads all of it and keeps its replicas' shares of each global batch (`shard` must be None)."""
        if shard is not None:
            raise ValueError(f"shard: the bundled dataset {self.path} is read whole by every worker; got {shard!r}.")
        if labels not in stream.LABELS:
            raise ValueError(f"labels: expected one of {stream.LABELS}; got {labels!r}.")
        x, y = self._x(stream._split(split)), self._y(split)
        if labels is not None and y is None:
            raise ValueError(f"labels: {self.path} has no labels; got labels={labels!r}.")
        if labels == "one_hot":
            y = np.eye(self.classes, dtype=np.float32)[y]
        static = binarization == "static"
        if static:  # the split's one draw, as `tfvae.data.binarize_static` makes it
            x, binarization = data.binarize_static(x, seed), None
        ds = data.make_dataset(x, batch_size, binarization, shuffle, seed, labels=None if labels is None else y,
                               drop_remainder=drop_remainder)
        return data.mark_checked(ds) if static else ds

    def read(self, split="test", limit=None, binarization=None, seed=None):
        x, y = self._x(stream._split(split)), self._y(split)
        if binarization == "static":
            x = data.binarize_static(x, seed)
        elif binarization is not None:
            raise ValueError(f"binarization: expected None or 'static' to read a split; got {binarization!r}.")
        return (x, y) if limit is None else (x[:limit], None if y is None else y[:limit])

    def _x(self, split):
        a = self.arrays
        if split == "all":
            return np.concatenate([a.x_train, a.x_test])
        return a.x_train if split == "train" else a.x_test

    def _y(self, split):
        a = self.arrays
        if a.y_train is None or a.y_test is None:
            return None
        if split == "all":
            return np.concatenate([a.y_train, a.y_test])
        return a.y_train if split == "train" else a.y_test
