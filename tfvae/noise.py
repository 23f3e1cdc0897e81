"""eps ~ N(0, I) for the reparameterization z = mu + sigma * eps, drawn cheaply inside a step."""

import contextlib
import math

import numpy as np
import tensorflow as tf


def standard_normal(shape, seed):
    """Independent N(0, 1) draws of `shape` from a stateless seed pair, by the Box-Muller transform.

    (r cos t, r sin t) with r = sqrt(-2 log(1 - u1)), t = 2 pi u2 is a pair of independent
    standard normals for independent uniforms u1, u2: the method TF's own normal kernel uses,
    with the same float32 uniforms (so the same ~5.7 sigma reach of the tails). Why not that
    kernel: it splits 5,000 draws over the intra-op thread pool, and inside a training step,
    where the other core is busy with a matmul, it waited ~0.8 ms of a ~3.7 ms step on 2 cores;
    one uniform op of half the size and four elementwise ops take ~0.03 ms there
    (lever "tf_normal" of `benchmarks/throughput.py --levers`).

    Args:
        shape: [..., d]; entries may be scalar tensors.
        seed: a stateless seed, shape [2] int32 or int64.

    Returns:
        float32 tensor of `shape`.
    """
    *outer, d = shape
    pairs = (d + 1) // 2
    u = tf.random.stateless_uniform([2, *outer, pairs], seed)
    radius = tf.sqrt(-2.0 * tf.math.log1p(-u[0]))  # 1 - u is in (0, 1]: the log is finite
    angle = (2.0 * math.pi) * u[1]
    return tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], axis=-1)[..., :d]


def stateless_seed(seed, generator):
    """A stateless seed pair: from the int `seed`, or the next one of the `keras.random.SeedGenerator` when None."""
    return generator.next() if seed is None else tf.constant([seed, 0], tf.int64)


@contextlib.contextmanager
def seeded(generator, seed):
    """While open, the `keras.random.SeedGenerator` draws the stream an int `seed` fixes; afterwards it goes on
    from where it was, as if the block had drawn nothing. With seed None the block draws from it as usual."""
    if seed is None:
        yield
        return
    state = generator.state
    saved = state.numpy()
    state.assign(np.array([seed, 0], dtype=saved.dtype))
    try:
        yield
    finally:
        state.assign(saved)
