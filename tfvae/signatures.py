"""The graphs `tfvae.export` writes: one tf.function per signature, with named inputs and outputs.

The functions call the model through closures and the module tracks only its variables: a Keras
model tracked as a `tf.Module` attribute can leave the TFLite converter with uninitialized
variables, and LiteRT then returns NaN silently.

The estimators are `tfvae.objectives`', the ones training and evaluation use; only the noise differs
(TF's normal op). Ops TFLite has no builtin for are avoided: TFP's mixture sampling (stateless random
ops) here, and the full-covariance posterior's triangular solve and matrix diagonal in its head.

Every random op is built without a seed, whatever `keras.utils.set_random_seed` set: a seed in the
graph would make every freshly loaded model draw the same first samples. `sample_seeded` gives
reproducible draws instead, from a counter-based hash made of TFLite builtin integer ops, so the
same seed gives the same images in TensorFlow and in LiteRT.
"""

import math

import numpy as np
import tensorflow as tf
from tensorflow_probability import distributions as tfd

from tfvae import distributions, objectives

class Signatures(tf.Module):
    """The model's variables and its signature functions, ready for `tf.saved_model.save`.

    Args:
        model: a built `tfvae.VAE`.
        log_prob_samples: K, the importance samples behind the `log_prob` signature.
    """

    def __init__(self, model, log_prob_samples):
        super().__init__(name="tfvae_export")
        # The tf.Variables behind the Keras variables, as keras.export.ExportArchive tracks them.
        self.model_variables = [v.value for v in model.variables]
        event_shape, latent_dim = model.event_shape, model.latent_dim
        x_spec = tf.TensorSpec((None, *event_shape), tf.float32, name="x")
        z_spec = tf.TensorSpec((None, latent_dim), tf.float32, name="z")
        n_spec = tf.TensorSpec((), tf.int32, name="num_samples")
        seed_spec = tf.TensorSpec((), tf.int32, name="seed")

        def encode(x):
            q = model.encode(_check_feature_shape(x, event_shape))
            return {"z_mean": q.mean(), "z_stddev": distributions.posterior_stddev(model.posterior_head, q)}

        def decode(z):
            z = _check_feature_shape(z, (latent_dim,))
            return {"x_mean": _point_estimate(model, z)}

        def reconstruct(x):
            return {"x_mean": model.reconstruct(_check_feature_shape(x, event_shape))}

        def sample(num_samples):
            _unseed_graph()
            uniform = tf.random.uniform(tf.stack([num_samples, 1]))
            z = _prior_sample(model.prior, uniform, tf.random.normal(tf.stack([num_samples, latent_dim])))
            return {"x_mean": _point_estimate(model, z)}

        def sample_seeded(num_samples, seed):
            z = _prior_sample_from_seed(model.prior, num_samples, latent_dim, seed)
            return {"x_mean": _point_estimate(model, z)}

        def elbo(x):
            _unseed_graph()
            return {"elbo": _elbo(model, _check_feature_shape(x, event_shape))}

        def log_prob(x):
            _unseed_graph()
            x = _check_feature_shape(x, event_shape)
            return {"log_prob": objectives.importance_sampled(model, x, log_prob_samples, _noise(latent_dim))["log_prob"]}

        specs = {
            "encode": (encode, [x_spec]),
            "decode": (decode, [z_spec]),
            "reconstruct": (reconstruct, [x_spec]),
            "sample": (sample, [n_spec]),
            "sample_seeded": (sample_seeded, [n_spec, seed_spec]),
            "elbo": (elbo, [x_spec]),
            "log_prob": (log_prob, [x_spec]),
        }
        self.functions = {
            name: tf.function(function, input_signature=input_signature, autograph=False)
            for name, (function, input_signature) in specs.items()
        }

    def signatures(self):
        """{signature name: concrete function}, with `serving_default` the same as `encode`."""
        concrete = {name: f.get_concrete_function() for name, f in self.functions.items()}
        return {**concrete, "serving_default": concrete["encode"]}


def _check_feature_shape(x, event_shape):
    """x itself, or a runtime shape error if x is not [rows, *event_shape].

    LiteRT resizes an input to whatever it is given, and its flattening ops would regroup a
    [4, 48] batch into [3, 64] and answer for the wrong examples. Adding zeros of shape
    [rows, *event_shape] fails instead. A reshape cannot check this: the TFLite converter turns
    [tf.shape(x)[0], 64] into [-1, 64] and drops a reshape to x's own static shape. Rows counted
    through a reduction survive conversion.
    """
    rows = tf.size(tf.reduce_sum(x, axis=list(range(1, 1 + len(event_shape)))))
    return x + tf.zeros(tf.concat([[rows], event_shape], axis=0))


def _unseed_graph():
    """Drops the graph-level seed `keras.utils.set_random_seed` put on the graph being traced, so
    random ops get seed 0: TensorFlow and LiteRT then seed them afresh each time a model is loaded."""
    tf.compat.v1.get_default_graph().seed = None


def _point_estimate(model, z):
    """The x that p(x|z) stands for (its mean unless the likelihood head says otherwise)."""
    return distributions.point_estimate(model.likelihood_head, model.likelihood(z))


def _noise(latent_dim):
    """eps ~ N(0, I) [k, B, latent_dim] from TF's normal op, seeded afresh at every load (see `_unseed_graph`)."""
    return lambda k, batch_size: tf.random.normal(tf.stack([k, batch_size, latent_dim]))


def _elbo(model, x):
    """A one-sample ELBO per example, the estimator of `model.elbo(x)`."""
    sample = objectives.posterior_sample(model, x, model.posterior(x), _noise(model.latent_dim)(1, tf.shape(x)[0]))
    return objectives.elbo(sample)[0]


def _prior_sample(prior, uniform, eps):
    """z ~ p(z) from noise: `uniform` [n, 1] ~ U(0, 1) picks a mixture component, `eps` [n, latent_dim]
    ~ N(0, I) places z in it. TFP's own mixture sampling uses stateless ops TFLite lacks."""
    if isinstance(prior, tfd.MixtureSameFamily):
        cdf = tf.cumsum(tf.nn.softmax(prior.mixture_distribution.logits_parameter()))
        component = tf.minimum(tf.reduce_sum(tf.cast(uniform > cdf, tf.int32), axis=-1), tf.size(cdf) - 1)
        normal = _normal(prior.components_distribution)
        return tf.gather(normal.loc, component) + tf.gather(normal.scale, component) * eps
    normal = _normal(prior)
    return normal.loc + normal.scale * eps


def _prior_sample_from_seed(prior, num_samples, latent_dim, seed):
    """z ~ p(z), [num_samples, latent_dim], a function of `seed` alone."""
    uniform = _uniform(seed, tf.stack([num_samples, 2 * latent_dim + 1]))
    u1, u2 = uniform[:, :latent_dim], uniform[:, latent_dim:-1]
    eps = tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos(2.0 * math.pi * u2)  # Box-Muller
    return _prior_sample(prior, uniform[:, -1:], eps)


def _normal(distribution):
    if not (isinstance(distribution, tfd.Independent) and isinstance(distribution.distribution, tfd.Normal)):
        raise TypeError(
            "export: sampling supports an Independent Normal prior or a mixture of them (the priors tfvae "
            f"ships); got {type(distribution).__name__}."
        )
    normal = distribution.distribution
    return tfd.Normal(tf.convert_to_tensor(normal.loc), tf.convert_to_tensor(normal.scale))


def _uniform(seed, shape):
    """Uniform(0, 1) values from hash(seed, counter), open at both ends.

    The hash is lowbias32 (Wellons) on int32 bits: multiplications wrap, and logical right shifts
    are arithmetic shifts with the sign bits cleared, all TFLite builtins.
    """
    counter = tf.reshape(tf.range(tf.reduce_prod(shape), dtype=tf.int32), shape)
    bits = _hash(tf.bitwise.bitwise_xor(_hash(counter), _hash(seed)))
    # The top 24 bits are exact in float32; the half step keeps log(u) finite.
    return (tf.cast(_shift_right(bits, 8), tf.float32) + 0.5) * 2.0**-24


def _hash(x):
    for shift, multiplier in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x = tf.bitwise.bitwise_xor(x, _shift_right(x, shift))
        x = x * tf.constant(np.uint32(multiplier).view(np.int32))
    return tf.bitwise.bitwise_xor(x, _shift_right(x, 16))


def _shift_right(x, shift):
    """Logical right shift of int32 bits."""
    sign_bits = tf.where(x < 0, tf.constant(-(1 << (32 - shift)), tf.int32), 0)
    return tf.bitwise.bitwise_xor(tf.bitwise.right_shift(x, shift), sign_bits)
