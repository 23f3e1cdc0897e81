"""The pipeline every source's examples go through: each epoch's order, a worker's shard, batches, binarization.

A source gives its examples as (x, id, label) triples: x float32 of the source's event shape, id an
int64 that names the example for good (its row, its file's index, its key's fingerprint), label an
int64 class or -1. Everything random is drawn from one seeded stream of stateless seed pairs that
restarts differently for every new iterator, as `tfvae.data.make_dataset` draws it: a seed makes a
run reproducible, every epoch (every iterator `fit` makes) has a fresh order and fresh binary
draws, and `tfvae.data.skip_iterations` moves a resumed run on to where it stopped.
"""

import os

import numpy as np
import tensorflow as tf

from tfvae import arguments, checks, data

BINARIZATIONS = (None, "dynamic", "static")
LABELS = (None, "int", "one_hot")
SPLITS = ("train", "test", "all")
# Files decoded at once. Fixed, not tf.data's autotuner: it runs a thread per iterator that `fit`'s
# new iterator every epoch waits for (see `tfvae.data._untuned_options`).
PARALLEL_CALLS = max(2, os.cpu_count() or 1)
PREFETCH_BATCHES = 2
READ_BATCH = 500  # examples per batch when a split is read into memory


class Source:
    """A dataset of examples that is read as it is needed; `tfvae.sources.open` makes one.

    Attributes:
        kind: one of `tfvae.sources.KINDS`.
        path: what was opened.
        event_shape: the shape of one example, e.g. (28, 28, 1).
        classes: the number of classes of its labels, or None when it has none.
        skipped: files (or records) skipped as unreadable (`skip_bad_files=True`).

    Subclasses give `size(split)` and `_batches(split, batch_size, pair, shard, drop_remainder)`: a
    dataset of batches (x, id, label) in the epoch's order for seed pair `pair` (None: the source's own
    order), of the examples of `shard`.
    """

    kind = None
    skipped = 0

    def describe(self):
        """What config.json records of the source: enough to open it again, and what its split is."""
        return {"source": self.path, "kind": self.kind, "split": self.split_rule, "event_shape": list(self.event_shape),
                "train_examples": self.size("train"), "test_examples": self.size("test"), "classes": self.classes,
                "skipped_files": self.skipped}

    def with_test(self, held_out):
        """This source as the training split and `held_out` (another source) as the test split."""
        from tfvae.sources.held_out import HeldOut

        return HeldOut(self, held_out)

    def size(self, split):
        raise NotImplementedError

    def names(self, split):
        """The examples' names in the split's own order (file paths, rows), or None when they have none."""
        return None

    def dataset(self, split="train", batch_size=32, binarization=None, shuffle=True, seed=None, labels=None,
                shard=None, drop_remainder=False):
        """A batched `tf.data.Dataset` of the split, for `model.fit`, `evaluate` or `predict`.

        Args:
            split: "train", "test" or "all".
            batch_size: examples per batch (per worker, with `shard`).
            binarization: None, "dynamic" (a fresh Bernoulli draw of x every time an example is read)
                or "static" (one draw per example that `seed` fixes, the same in every epoch, batch
                and order: how a binarized test split is scored).
            shuffle: a fresh order every epoch (of files, then of records in blocks, for TFRecord and CSV).
            seed: makes the order and the draws reproducible.
            labels: None for batches of x; "int" or "one_hot" for (x, labels) pairs. The source must
                have labels.
            shard: (count, index): this worker's share of every epoch, for `count` workers reading
                disjoint shares that together are the split; None reads all of it.
            drop_remainder: drop a last batch smaller than `batch_size`.
        """
        split = _split(split)
        batch_size = arguments.batch_size(batch_size)
        if binarization not in BINARIZATIONS:
            raise ValueError(f"binarization: expected one of {BINARIZATIONS}; got {binarization!r}.")
        if labels not in LABELS:
            raise ValueError(f"labels: expected one of {LABELS}; got {labels!r}.")
        if labels is not None and self.classes is None:
            raise ValueError(f"labels: {self.path} has no labels; got labels={labels!r}.")
        shard = _shard(shard)
        seed = checks.seed(seed)
        if seed is None and binarization == "static":
            seed = int(np.random.default_rng().integers(2**62))  # one draw, then fixed, as data.binarize_static
        if self.size(split) == 0:
            raise ValueError(f"split: {self.path} has no {split} examples: by the split rule ({self.split_rule}) all "
                             f"{self.size('all')} are in the other; give a test split of its own with test=PATH "
                             f"(--test-dataset PATH).")
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        if shuffle:  # the first pair of each iterator orders its epoch; the batches' draws take the pairs after it
            epoch = seeds.take(1).flat_map(lambda pair: self._batches(split, batch_size, pair, shard, drop_remainder))
            seeds = seeds.skip(1)
        else:
            epoch = self._batches(split, batch_size, None, shard, drop_remainder)
        count = self._shard_size(split, shard)
        batches = count // batch_size if drop_remainder else -(-count // batch_size)
        epoch = epoch.apply(tf.data.experimental.assert_cardinality(batches))
        if binarization == "dynamic":
            epoch = tf.data.Dataset.zip((epoch, seeds)).map(lambda e, pair: (_bernoulli(e[0], pair), *e[1:]))
        elif binarization == "static":
            epoch = epoch.map(lambda x, ids, y: (_static_bernoulli(x, ids, seed), ids, y))
        classes = self.classes
        if labels is None:
            ds = epoch.map(lambda x, ids, y: x)
        elif labels == "int":
            ds = epoch.map(lambda x, ids, y: (x, y))
        else:
            ds = epoch.map(lambda x, ids, y: (x, tf.one_hot(y, classes, dtype=tf.float32)))
        ds = ds.prefetch(PREFETCH_BATCHES).with_options(_options())
        if binarization is not None:
            data.mark_checked(ds)  # 0s and 1s: in the support of every likelihood tfvae has
        return ds

    def read(self, split="test", limit=None, binarization=None, seed=None):
        """The split's first `limit` examples (all by default) in its own order, in memory.

        Returns:
            (x float32 of shape (n, *event_shape), int64 labels or None).
        """
        size = self.size(_split(split))
        n = size if limit is None else min(arguments.positive_int(limit, "limit"), size)
        batch_size, labelled = min(READ_BATCH, max(n, 1)), self.classes is not None
        ds = self.dataset(split, batch_size, binarization, shuffle=False, seed=seed, labels="int" if labelled else None)
        xs, ys = [], []
        for element in ds.take(-(-n // batch_size)):
            x, y = element if labelled else (element, None)
            xs.append(x.numpy())
            ys.append(None if y is None else y.numpy())
        return np.concatenate(xs)[:n], np.concatenate(ys)[:n] if labelled else None

    def _batches(self, split, batch_size, pair, shard, drop_remainder):
        raise NotImplementedError

    def _shard_size(self, split, shard):
        """Examples of the split that worker `shard` reads each epoch: every count-th of the epoch's order."""
        n = self.size(split)
        if shard is None:
            return n
        count, index = shard
        return len(range(index, n, count))


def ordered(count, pair, shard):
    """Positions 0..count-1 in the epoch's order (a permutation that `pair` draws, or as they are), and of
    them every shard[0]-th from shard[1]: a tensor, for sources that can read any example."""
    order = tf.range(count, dtype=tf.int64)
    if pair is not None:
        order = tf.random.experimental.stateless_shuffle(order, pair)
    if shard is not None:
        order = order[shard[1]::shard[0]]
    return order


def block_shuffled(ds, pair, size):
    """ds's elements shuffled within consecutive blocks of `size`, each block by its own draw from `pair`:
    a shuffle buffer's reach, but seeded by the epoch's pair (Dataset.shuffle takes no tensor seed)."""
    def shuffle(index, block):
        count = tf.shape(tf.nest.flatten(block)[0])[0]
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count), tf.random.experimental.stateless_fold_in(pair, index))
        return tf.nest.map_structure(lambda t: tf.gather(t, order), block)

    return ds.batch(size).enumerate().map(shuffle).unbatch()


def split_of(keys):
    """Whether each key (string) lies in the test split: its FarmHash fingerprint mod 6 is 0."""
    from tfvae.sources import TEST_BUCKETS

    return tf.equal(tf.strings.to_hash_bucket_fast(keys, TEST_BUCKETS), 0)


def key_ids(keys):
    """A fixed int64 id per key, for the per-example static binarization."""
    return tf.strings.to_hash_bucket_fast(keys, 2**62)


def _split(split):
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}; got {split!r}.")
    return split


def _shard(shard):
    if shard is None:
        return None
    try:
        count, index = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard: expected (count, index) with 0 <= index < count; got {shard!r}.") from None
    if not 0 <= index < count:
        raise ValueError(f"shard: expected (count, index) with 0 <= index < count; got {shard!r}.")
    return None if count == 1 else (count, index)


def _bernoulli(x, pair):
    return tf.cast(tf.random.stateless_uniform(tf.shape(x), seed=pair) < x, x.dtype)


def _static_bernoulli(x, ids, seed):
    """One Bernoulli draw of each example that depends on (seed, its id) alone, not on its batch."""
    seed = tf.constant(seed, tf.int64)

    def draw(example):
        image, i = example
        return tf.cast(tf.random.stateless_uniform(tf.shape(image), seed=tf.stack([seed, i])) < image, image.dtype)

    return tf.map_fn(draw, (x, ids), fn_output_signature=x.dtype)


def _options():
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options
