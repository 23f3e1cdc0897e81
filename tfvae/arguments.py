"""Checks on counts and numbers that users pass, without TensorFlow: the command line runs them
before it imports TensorFlow (see `tfvae.schedule_specs`), and `tfvae.checks` has them too.

Each failure is a ValueError naming the argument, what was expected and what was given.
"""

import numbers

import numpy as np


# The largest step count a graph holds: the optimizer's step is an int64, and a larger count would wrap.
INT64_MAX = 2**63 - 1
# The largest batch: TensorFlow and Keras keep batch sizes in int32, and tf.data fails deep inside on more.
BATCH_MAX = 2**31 - 1
# Numbers that enter the graph as float32: a larger one is inf there.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def positive_int(value, name, maximum=None):
    """Returns `value` as an int, or raises unless it is a whole number >= 1 (and <= maximum, if given)."""
    return _int_at_least(value, 1, name, maximum)


def batch_size(value, name="batch_size"):
    """Returns `value` as an int, or raises unless it is a whole number from 1 to `BATCH_MAX`."""
    return positive_int(value, name, BATCH_MAX)


def non_negative_int(value, name):
    """Returns `value` as an int, or raises unless it is a whole number >= 0."""
    return _int_at_least(value, 0, name)


def _int_at_least(value, low, name, maximum=None):
    # bool is an Integral, but `True` for a count is a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}; got {value!r}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: expected an integer from {low} to {maximum}; got {value!r}.")
    return int(value)


def latent_dims(value, name="latent_dim"):
    """`value` as a tuple of the stochastic layers' sizes, bottom first: (d,) for an int d >= 1, or a
    non-empty tuple or list of such ints, one per layer."""
    if isinstance(value, (tuple, list)):
        if not value or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in value):
            raise ValueError(f"{name}: expected an integer >= 1, or a non-empty tuple of them (one per stochastic "
                             f"layer, bottom first, e.g. (40, 40)); got {value!r}.")
        return tuple(int(d) for d in value)
    return (positive_int(value, name),)


def finite_float(value, name, minimum=0.0, inclusive=False):
    """Returns `value` as a float, or raises unless it is a finite number above `minimum` (or equal, if
    inclusive) that float32, the graph's precision, holds: 1e308 would be inf there."""
    number = not isinstance(value, bool) and isinstance(value, numbers.Real)
    above = number and (value >= minimum if inclusive else value > minimum)
    if not above or not np.isfinite(value):
        bound = ">=" if inclusive else ">"
        raise ValueError(f"{name}: expected a finite number {bound} {minimum:g}; got {value!r}.")
    if abs(value) > FLOAT32_MAX:
        raise ValueError(f"{name}: expected a number float32 can hold (at most {FLOAT32_MAX:.4g}); got {value!r}.")
    return float(value)
