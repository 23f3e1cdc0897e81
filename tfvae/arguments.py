"""Checks on counts and numbers that users pass, without TensorFlow: the command line runs them
before it imports TensorFlow (see `tfvae.schedule_specs`), and `tfvae.checks` has them too.

Each failure is a ValueError naming the argument, what was expected and what was given.
"""

import numbers

import numpy as np


def positive_int(value, name):
    """Returns `value` as an int, or raises unless it is a whole number >= 1."""
    return _int_at_least(value, 1, name)


def non_negative_int(value, name):
    """Returns `value` as an int, or raises unless it is a whole number >= 0."""
    return _int_at_least(value, 0, name)


def _int_at_least(value, low, name):
    # bool is an Integral, but `True` for a count is a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}; got {value!r}.")
    return int(value)


def finite_float(value, name, minimum=0.0, inclusive=False):
    """Returns `value` as a float, or raises unless it is a finite number above `minimum` (or equal, if inclusive)."""
    number = not isinstance(value, bool) and isinstance(value, numbers.Real)
    above = number and (value >= minimum if inclusive else value > minimum)
    if not above or not np.isfinite(value):
        bound = ">=" if inclusive else ">"
        raise ValueError(f"{name}: expected a finite number {bound} {minimum:g}; got {value!r}.")
    return float(value)
