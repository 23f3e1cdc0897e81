"""A conditional VAE's conditions c: checked against the model, and joined to the features q(z|x, c) and
p(x|z, c) read, so any encoder or decoder body works unchanged."""

import math
import numbers

import tensorflow as tf

from tfvae import arguments, checks


class MissingCondition(ValueError):
    """A hook of a conditional model called without a condition, or of an unconditional one with one."""


def condition_shape(value):
    """`condition_shape`: None, or a non-empty shape of positive ints as a tuple."""
    if value is None:
        return None
    shape = (value,) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if not isinstance(shape, (tuple, list)) or not shape:
        raise ValueError(f"condition_shape: expected None or a non-empty tuple of positive ints such as (10,); got {value!r}.")
    return tuple(arguments.positive_int(d, "condition_shape") for d in shape)


def _error(shape, condition, name="condition"):
    if shape is None:
        return (
            f"{name}: this model is unconditional (condition_shape=None) and takes no condition; "
            f"got {type(condition).__name__}."
        )
    return (
        f"{name}: this model is conditional (condition_shape={shape}) and needs a condition per example, "
        f"shape (batch, {', '.join(map(str, shape))}); got None."
    )


def joined(features, condition, shape, leading=None):
    """features [N, F] with the flattened condition appended, [N, F + C]; features as they are without one.

    Args:
        features: the encoder body's output, or z as rows.
        condition: None, or [B, *condition_shape] (B may be 1).
        shape: the model's condition_shape (None for an unconditional model).
        leading: the leading shape that `features`' N rows were flattened from, e.g. [K, B];
            None when the rows are the condition's own.
    """
    if (condition is None) != (shape is None):
        raise MissingCondition(_error(shape, condition))
    if condition is None:
        return features
    size = math.prod(shape)
    c = tf.reshape(tf.cast(condition, features.dtype), (-1, size))
    if leading is not None:
        # The rows for [K, B] leading dimensions are the B conditions K times (or one, K B times): a tile,
        # not BROADCAST_TO, which LiteRT answered with stale rows on the first call after an empty batch.
        c = tf.tile(c, [tf.math.reduce_prod(leading) // tf.maximum(tf.shape(c)[0], 1), 1])
    return tf.concat([features, c], axis=-1)


def checked(condition, shape, rows=None, name="condition"):
    """The condition checked against the model's condition_shape: None for an unconditional model (which
    refuses one), for a conditional one a float32 tensor of shape (rows, *condition_shape), finite."""
    if (condition is None) != (shape is None):
        raise ValueError(_error(shape, condition, name))
    if condition is None:
        return None
    c = checks.as_batch(condition, shape, name)
    if rows is not None and c.shape[0] is not None and c.shape[0] != rows:
        raise ValueError(f"{name}: expected one condition per example ({rows} rows); got {c.shape[0]} rows.")
    return c


def checked_for_sample(condition, shape, num_samples, name="condition"):
    """`checked` for `sample`: one condition (shape `condition_shape`) for every draw, or one per draw."""
    if shape is not None and condition is not None:
        if checks.as_array(condition, name).shape == shape:
            condition = [condition]  # one condition, drawn from num_samples times
    condition = checked(condition, shape, name=name)
    if condition is not None and condition.shape[0] not in (1, num_samples):
        raise ValueError(
            f"{name}: expected one condition of shape {shape} or one per draw "
            f"({num_samples} rows); got {condition.shape[0]} rows."
        )
    return condition
