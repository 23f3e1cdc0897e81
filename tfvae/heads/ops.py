"""The numerics heads share, in forms that TensorFlow and LiteRT evaluate alike (TFLite builtin ops only)."""

import contextlib
import math
import threading

import keras
import numpy as np
import tensorflow as tf

# softplus(raw) = 1 at this raw value: heads start at unit scale.
UNIT_SOFTPLUS = math.log(math.e - 1.0)


def as_float32(params):
    """Distribution parameters in float32, whatever the layers compute in (e.g. mixed_bfloat16):
    log-densities, and so the loss, keep float32 precision."""
    return tf.cast(params, tf.float32)


# softplus(x) = x in float32 from x = 17 on; LiteRT's SOFTPLUS kernel overflows to inf past x = 88.7.
_SOFTPLUS_LINEAR_FROM = 80.0
class TracingSwitch:
    """A per-thread flag that is on inside `with switch.on():`, where a graph is traced: heads read it
    (`bool(switch)`) to trace one form of their math or another."""

    def __init__(self):
        self._local = threading.local()

    def __bool__(self):
        return getattr(self._local, "on", False)

    @contextlib.contextmanager
    def on(self):
        previous = bool(self)
        self._local.on = True
        try:
            yield
        finally:
            self._local.on = previous


# Whether the graph being traced is one the export converts to TFLite (see `litert_forms`).
_litert = TracingSwitch()


def litert_forms():
    """While open, heads trace the forms LiteRT evaluates as TensorFlow does (`softplus`); `tfvae.signatures`
    traces every exported graph inside it. Training and evaluation keep TensorFlow's own kernels: the
    capped softplus costs four more passes over a Bernoulli's B x D logits per step, ~9% of the
    benchmark MLP's `fit` throughput."""
    return _litert.on()


def softplus(x):
    """log(1 + exp(x)), evaluated alike by TensorFlow and LiteRT for every finite x.

    TensorFlow's kernel is exact everywhere. LiteRT computes SOFTPLUS as log(1 + exp(x)) in float32:
    softplus(89) = inf there, so a head's -softplus(-x) became -inf and 0 * softplus(x) NaN on device
    for parameters TensorFlow handles. In graphs traced for LiteRT (`litert_forms`) the op sees at most
    80, past which the function is x to float32 precision, and the linear part is added outside it;
    the gradient is sigmoid(x) everywhere (1 past 80).
    """
    if not _litert:
        return tf.nn.softplus(x)
    return tf.nn.softplus(tf.minimum(x, _SOFTPLUS_LINEAR_FROM)) + tf.nn.relu(x - _SOFTPLUS_LINEAR_FROM)


def flatten_features(h):
    """Encoder bodies may end in feature maps; the posterior needs one vector per example."""
    if len(h.shape) == 2:
        return h
    return keras.ops.reshape(h, (-1, int(np.prod(h.shape[1:]))))


def log1mexp(d):
    """log(1 - exp(-d)) for d > 0, in ops TFLite has builtins for (no expm1, no log1p).

    For d < 0.5, 1 - exp(-d) = d exp(-d/2) sinh(d/2) / (d/2) and log(sinh(u) / u) is its Taylor
    series u^2/6 - u^4/180 + u^6/2835 (next term 4e-10 at u = 0.25): no cancellation near 0.
    """
    u = 0.5 * tf.minimum(d, 0.5)
    series = tf.math.log(2.0 * u) - u + tf.square(u) * (1.0 / 6 + tf.square(u) * (-1.0 / 180 + tf.square(u) / 2835))
    direct = tf.math.log(1.0 - tf.exp(-tf.maximum(d, 0.5)))
    return tf.where(d < 0.5, series, direct)


# lgamma(x) = lgamma(x + 8) - log(x (x + 1) ... (x + 7)), and Stirling's series for lgamma(y), y >= 8.
_LGAMMA_SHIFT = 8
_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


def log_gamma(x):
    """lgamma(x) for x > 0 in TFLite builtin ops (TFLite has no Lgamma): in float32, within 1e-6 of
    scipy's gammaln relative, or 4e-6 absolute near its zeros at 1 and 2 (tests/test_models.py).

    The shift of 8 makes Stirling's series exact to 3e-10 (its next term 1/(1680 y^7) at y = 8);
    the shift's product is summed as logs, which do not overflow for large x.
    """
    y = x + _LGAMMA_SHIFT
    shift = tf.add_n([tf.math.log(x + i) for i in range(_LGAMMA_SHIFT)])
    inverse, inverse_square = 1.0 / y, 1.0 / tf.square(y)
    series = inverse * (1.0 / 12 + inverse_square * (-1.0 / 360 + inverse_square / 1260))
    # (y - 1/2)(log y - 1) - 1/2 is (y - 1/2) log y - y with smaller terms to round.
    return (y - 0.5) * (tf.math.log(y) - 1.0) - 0.5 + _HALF_LOG_TWO_PI + series - shift
