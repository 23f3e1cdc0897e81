"""TFRecord files of `tf.train.Example`s: an encoded image under `image`, an optional int64 `label`
(as TFDS writes them), read file by file, interleaved, and shuffled in blocks."""

import glob
import os

import numpy as np
import tensorflow as tf

from tfvae.sources import images, stream

IMAGE, LABEL = "image", "label"
SHUFFLE_BLOCK = 4096  # records shuffled together, in a fresh file order every epoch
CYCLE_LENGTH = 4  # files read at once


class RecordFiles(stream.Source):
    """TFRecord files named by a path, a glob, or a folder holding them (see `tfvae.sources`). Under
    several workers (`shard`) each reads its own files, when there are as many files as workers, and
    every count-th record of the stream otherwise."""

    kind = "tfrecord"
    split_rule = "FarmHash fingerprint of 'file:record' mod 6 == 0 is test"

    def __init__(self, pattern, image_size=None, skip_bad_files=False, channels=None):
        self.path = pattern
        files = _files(pattern)
        root = os.path.dirname(files[0]) if len(files) == 1 else os.path.commonpath(files)
        self._files = np.array(files)
        relative = [os.path.relpath(f, root).replace(os.sep, "/") for f in files]
        self._label = _check_features(files[0])
        counts = [int(tf.data.TFRecordDataset(f).reduce(np.int64(0), lambda n, _: n + 1)) for f in files]
        file_of = np.repeat(np.arange(len(files)), counts)
        record_of = np.concatenate([np.arange(c) for c in counts]) if counts else np.zeros(0, np.int64)
        keys = np.array([f"{relative[f]}:{r}" for f, r in zip(file_of, record_of)])
        if not len(keys):
            raise ValueError(f"{pattern}: the TFRecord files hold no records.")
        label = self._label

        def parse(i, record):
            example = tf.io.parse_single_example(record, _features(label))
            return i, example[IMAGE]

        shapes, bad = images.scan(self._records().enumerate().map(parse), len(keys))
        names = np.array([f"{files[f]} (record {r})" for f, r in zip(file_of, record_of)])
        self.skipped = images.refuse_or_skip(bad, names, lambda i: self._reason(i), skip_bad_files, pattern)
        good = np.setdiff1d(np.arange(len(keys)), bad)
        self.event_shape, self.channels = images.checked_shape(shapes[good], names[good], image_size, channels, pattern)
        self._decode = images.batch_decoder(shapes[good], self.channels, image_size, self.event_shape)
        labels = self._labels() if label else None
        if labels is not None and (labels[good] < 0).any():
            raise ValueError(f"{names[good][np.argmax(labels[good] < 0)]}: expected an int64 {LABEL} >= 0 in every "
                             f"record, as the first has; got {labels[good].min()}.")
        self.classes = None if labels is None else int(labels[good].max()) + 1
        test = stream.split_of(tf.constant(keys)).numpy()
        self._bad_ids = stream.key_ids(tf.constant(keys[bad], tf.string)).numpy() if len(bad) else None
        self._relative = np.array(relative)
        self._count = {split: np.bincount(file_of[good[mask]], minlength=len(files))
                       for split, mask in (("train", ~test[good]), ("test", test[good]), ("all", slice(None)))}
        self._names = {"train": keys[good[~test[good]]], "test": keys[good[test[good]]], "all": keys[good]}

    def size(self, split):
        return int(self._count[split].sum())

    def _shard_size(self, split, shard):
        if shard is not None and len(self._files) >= shard[0]:
            return int(self._count[split][shard[1]::shard[0]].sum())
        return super()._shard_size(split, shard)

    def _batches(self, split, batch_size, pair, shard, drop_remainder):
        by_file = shard is not None and len(self._files) >= shard[0]
        mine = np.arange(len(self._files))[shard[1]::shard[0]] if by_file else np.arange(len(self._files))
        order = tf.gather(tf.constant(mine, tf.int64), stream.ordered(len(mine), pair, None))
        records = self._keyed(order)
        if split != "all":
            test = split == "test"
            records = records.filter(lambda key, record: tf.equal(stream.split_of(key), test))
        if self._bad_ids is not None:
            bad = tf.constant(self._bad_ids)
            records = records.filter(lambda key, record: ~tf.reduce_any(tf.equal(stream.key_ids(key), bad)))
        if shard is not None and not by_file:
            count, index = shard
            records = records.enumerate().filter(lambda i, r: tf.equal(i % count, index)).map(lambda i, r: r)
        if pair is not None:
            records = stream.block_shuffled(records, pair, SHUFFLE_BLOCK)
        label, decode = self._label, self._decode

        def load(keys, batch):
            examples = tf.io.parse_example(batch, _features(label))
            labels = examples[LABEL] if label else tf.fill(tf.shape(keys), tf.constant(-1, tf.int64))
            return decode(examples[IMAGE]), stream.key_ids(keys), labels

        return records.batch(batch_size, drop_remainder).map(load, num_parallel_calls=stream.PARALLEL_CALLS)

    def names(self, split):
        return list(self._names[split])

    def _records(self, order=None):
        """The raw records of the files in `order` (all, in sorted order, by default), one file after another."""
        files = tf.constant(self._files)
        order = tf.range(len(self._files), dtype=tf.int64) if order is None else order
        return tf.data.Dataset.from_tensor_slices(order).flat_map(lambda f: tf.data.TFRecordDataset(files[f]))

    def _keyed(self, order):
        """(key, record) pairs of the files in `order`, CYCLE_LENGTH files interleaved."""
        files, relative = tf.constant(self._files), tf.constant(self._relative)

        def of_file(f):
            return tf.data.TFRecordDataset(files[f]).enumerate().map(
                lambda r, record: (tf.strings.join([relative[f], tf.strings.as_string(r)], ":"), record))

        return tf.data.Dataset.from_tensor_slices(order).interleave(
            of_file, cycle_length=CYCLE_LENGTH, block_length=1, num_parallel_calls=stream.PARALLEL_CALLS)

    def _labels(self):
        labels = self._records().map(lambda r: tf.io.parse_single_example(r, {LABEL: tf.io.FixedLenFeature(
            [], tf.int64, default_value=-1)})[LABEL], num_parallel_calls=stream.PARALLEL_CALLS).ignore_errors()
        return np.fromiter(labels.as_numpy_iterator(), np.int64)

    def _reason(self, i):
        record = next(iter(self._records().skip(int(i)).take(1)))
        try:
            example = tf.io.parse_single_example(record, _features(self._label))
        except tf.errors.InvalidArgumentError as e:
            return e.message.strip().splitlines()[0]
        return images.decode_error(example[IMAGE])


def _files(pattern):
    if os.path.isdir(pattern):
        files = [os.path.join(pattern, n) for n in os.listdir(pattern) if ".tfrecord" in n.lower()]
    else:
        files = glob.glob(pattern)
    files = sorted(f for f in files if os.path.isfile(f))
    if not files:
        raise FileNotFoundError(f"{pattern}: matches no TFRecord files.")
    return files


def _features(label):
    spec = {IMAGE: tf.io.FixedLenFeature([], tf.string)}
    if label:
        spec[LABEL] = tf.io.FixedLenFeature([], tf.int64, default_value=-1)
    return spec


def _check_features(path):
    """Whether the records have labels, from the first record; a ValueError listing its features when it
    has no image."""
    first = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
    if first is None:
        return False
    try:
        features = tf.train.Example.FromString(first.numpy()).features.feature
    except Exception as e:  # protobuf's DecodeError, whose module depends on the protobuf build
        raise ValueError(f"{path}: its first record is not a tf.train.Example ({e}).") from None
    if IMAGE not in features:
        raise ValueError(f"{path}: expected an encoded image under the feature {IMAGE!r}; the records have "
                         f"{', '.join(sorted(features)) or 'no features'}.")
    return LABEL in features and features[LABEL].WhichOneof("kind") == "int64_list"
