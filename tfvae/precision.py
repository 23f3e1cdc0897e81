"""Reduced-precision evaluation: the decoder's matrix products in bfloat16, the rest in float32.

Importance-sampled evaluation (`VAE.log_prob`, `tfvae.evaluate.log_likelihood`) runs the decoder
on K x B codes, so its matrix products are most of the work. On CPUs with bfloat16 dot products
(avx512_bf16, AMX) they run about twice as fast in bfloat16. Only the decoder and the likelihood
head compute in bfloat16 (weights stay float32 and are rounded as they are read); their output,
the likelihood's parameters, is cast back to float32, so the log-densities, the sums over pixels
and the log-sum-exp over K keep float32's precision. `benchmarks/throughput.py` measures what the
rounding costs in nats and what it gains in speed.
"""

import contextlib

PRECISIONS = ("float32", "bfloat16")
# Keras's policy that computes in bfloat16 and keeps float32 variables.
_POLICIES = {"bfloat16": "mixed_bfloat16"}


def check(precision):
    """Returns `precision` if it is one of `PRECISIONS`, else raises naming the argument."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(map(repr, PRECISIONS))}; got {precision!r}.")
    return precision


@contextlib.contextmanager
def computing_in(layers, precision):
    """While open, every Keras layer in `layers` (and their sublayers) computes in `precision`.

    A layer's compute dtype is read when it is called, so a `tf.function` traced inside keeps it;
    the layers' own policies come back on exit.
    """
    if precision == "float32":
        yield
        return
    sublayers = [sub for layer in layers for sub in layer._flatten_layers(include_self=True)]
    saved = [sub.dtype_policy for sub in sublayers]
    try:
        for sub in sublayers:
            sub.dtype_policy = _POLICIES[precision]
        yield
    finally:
        for sub, policy in zip(sublayers, saved):
            sub.dtype_policy = policy

