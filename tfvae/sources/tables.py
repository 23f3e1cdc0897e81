"""CSV tables: a header row, then one example per row; the column `label` is the label, the rest features."""

import csv
import re

import numpy as np
import tensorflow as tf

from tfvae.sources import stream

LABEL = "label"
SHUFFLE_BLOCK = 10_000  # rows shuffled together
# What tf.data's CSV reader parses as a float: a decimal number with an optional exponent.
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class CSVTable(stream.Source):
    """A CSV file read row by row (`tf.data.experimental.CsvDataset`), shuffled in blocks of rows."""

    kind = "csv"
    split_rule = "FarmHash fingerprint of the row's index (from 0, as text) mod 6 == 0 is test"

    def __init__(self, path):
        self.path = path
        header, rows, largest = _scan(path)
        self._columns = len(header)
        self._label = header.index(LABEL) if LABEL in header else None
        self.feature_names = [h for h in header if h != LABEL]
        if not self.feature_names:
            raise ValueError(f"{path}: expected at least one feature column besides {LABEL!r}; got the header "
                             f"{header}.")
        if not rows:
            raise ValueError(f"{path}: expected rows of numbers after the header; got none.")
        self.event_shape = (len(self.feature_names),)
        self.classes = None if self._label is None else largest + 1
        self._test = stream.split_of(tf.strings.as_string(tf.range(rows, dtype=tf.int64))).numpy()
        self._rows = {"train": np.flatnonzero(~self._test), "test": np.flatnonzero(self._test), "all": np.arange(rows)}

    def size(self, split):
        return len(self._rows[split])

    def names(self, split):
        return [f"row {r}" for r in self._rows[split]]

    def _batches(self, split, batch_size, pair, shard, drop_remainder):
        label, columns = self._label, self._columns
        features = [c for c in range(columns) if c != label]
        rows = tf.data.experimental.CsvDataset(self.path, [tf.float32] * columns, header=True).enumerate()
        if split != "all":
            test, in_test = split == "test", tf.constant(self._test)
            rows = rows.filter(lambda i, values: tf.equal(tf.gather(in_test, i), test))
        if shard is not None:
            count, index = shard
            rows = rows.enumerate().filter(lambda j, row: tf.equal(j % count, index)).map(lambda j, row: row)
        if pair is not None:
            rows = stream.block_shuffled(rows, pair, SHUFFLE_BLOCK)

        def load(i, values):  # a batch of rows: i [batch], values a tuple of [batch] columns
            x = tf.stack([values[c] for c in features], axis=1)
            unlabelled = tf.fill(tf.shape(i), tf.constant(-1, tf.int64))
            y = tf.cast(values[label], tf.int64) if label is not None else unlabelled
            return x, i, y

        return rows.batch(batch_size, drop_remainder).map(load)


def _scan(path):
    """(header, rows, largest label or -1), after checking that every cell is a number, a label a whole one >= 0."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if not header or not any(header):
                raise ValueError(f"{path}: expected a header row naming the columns; the file is empty.")
            label = header.index(LABEL) if LABEL in header else None
            rows, largest = 0, -1
            for row in reader:
                line = reader.line_num
                if not row:
                    continue  # a blank line: the CSV reader skips it too
                if len(row) != len(header):
                    raise ValueError(f"{path}, line {line}: expected {len(header)} cells as the header has; "
                                     f"got {len(row)}.")
                for column, cell in zip(header, row):
                    if not _NUMBER.fullmatch(cell) or abs(float(cell)) > _FLOAT32_MAX:
                        raise ValueError(f"{path}, line {line}, column {column!r}: expected a number (within float32's "
                                         f"range); got {cell!r}.")
                if label is not None:
                    value = float(row[label])
                    if value != int(value) or value < 0:
                        raise ValueError(f"{path}, line {line}, column {LABEL!r}: expected a class label, a whole "
                                         f"number >= 0; got {row[label]!r}.")
                    largest = max(largest, int(value))
                rows += 1
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: expected a UTF-8 text file ({e}).") from None
    return header, rows, largest
