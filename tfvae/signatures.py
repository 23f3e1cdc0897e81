"""The graphs `tfvae.export` writes: one tf.function per signature, with named inputs and outputs.

The functions call the model through closures and the module tracks only its variables: a Keras
model tracked as a `tf.Module` attribute can leave the TFLite converter with uninitialized
variables, and LiteRT then returns NaN silently.

Ops TFLite has no builtin for are avoided: TFP's mixture sampling (stateless random ops), and the
full-covariance posterior's triangular solve and matrix diagonal.

Every input is checked in the graph, whatever runs it (TensorFlow, TF Serving, LiteRT): its exact
shape, finiteness, and for x the likelihood head's `in_support`; a bad one fails the call instead
of being regrouped, broadcast or answered with NaN. TensorFlow gets assertion messages naming the
input; the TFLite converter drops assertions, so the checks are also made of builtin ops that
LiteRT fails to run (see `_checked`).

Every random op is built without a seed, whatever `keras.utils.set_random_seed` set: a seed in the
graph would make every freshly loaded model draw the same first samples. `sample_seeded` gives
reproducible draws instead, from a counter-based hash made of TFLite builtin integer ops, so the
same seed gives the same images in TensorFlow and in LiteRT.
"""

import math

import numpy as np
import tensorflow as tf
from tensorflow_probability import distributions as tfd

# Importance samples per chunk of `log_prob` are capped so one chunk's decoder output stays near
# this many floats, whatever the batch size.
_CHUNK_ELEMENTS = 2**22


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

        likelihood = model.likelihood_head
        support = f"finite values in the support of the {type(likelihood).__name__} likelihood"

        def valid_x(x):
            return _all_finite(x) & tf.reduce_all(likelihood.in_support(x))

        def checked_x(x):
            return _checked(x, "x", event_shape, valid_x, support)

        def checked_count(num_samples):
            return _checked(num_samples, "num_samples", None, lambda n: n >= 0, "a count >= 0")

        def encode(x):
            q = model.encode(checked_x(x))
            return {"z_mean": q.mean(), "z_stddev": _stddev(q)}

        def decode(z):
            z = _checked(z, "z", (latent_dim,), _all_finite, "finite values")
            return {"x_mean": model.decode(z).mean()}

        def reconstruct(x):
            return {"x_mean": model.reconstruct(checked_x(x))}

        def sample(num_samples):
            _unseed_graph()
            num_samples = checked_count(num_samples)
            uniform = tf.random.uniform(tf.stack([num_samples, 1]))
            z = _prior_sample(model.prior, uniform, tf.random.normal(tf.stack([num_samples, latent_dim])))
            return {"x_mean": model.decode(z).mean()}

        def sample_seeded(num_samples, seed):
            num_samples = checked_count(num_samples)
            z = _prior_sample_from_seed(model.prior, num_samples, latent_dim, _checked(seed, "seed", None))
            return {"x_mean": model.decode(z).mean()}

        def elbo(x):
            _unseed_graph()
            return {"elbo": _elbo(model, checked_x(x))}

        def log_prob(x):
            _unseed_graph()
            return {"log_prob": _importance_weighted(model, checked_x(x), log_prob_samples)}

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


def _checked(value, name, feature_shape, valid=None, expected=None):
    """value, or a run-time error unless its shape is [rows, *feature_shape] and `valid` holds.

    TensorFlow raises InvalidArgumentError naming the input. The TFLite converter drops Assert ops,
    so each check also fails in builtin ops LiteRT cannot run past: see `_exact_shape` for the
    shape; a value check gathers index 1 of a one-element tensor.

    Args:
        value: a signature input.
        name: its name, for messages.
        feature_shape: the shape of one row, or None for a scalar input.
        valid: None (a shape check only), or value -> scalar bool, True if every value can be answered.
        expected: what valid values are, for the message, e.g. "finite values".
    """
    value = _exact_shape(value, name, feature_shape)
    if valid is None:
        return value
    ok = valid(value)
    with tf.control_dependencies([tf.debugging.Assert(ok, [f"{name}: expected {expected}"])]):
        index = tf.cast(tf.logical_not(ok), tf.int32)
        return value + tf.gather(tf.zeros([1], value.dtype), index)


def _all_finite(x):
    """True if x holds no NaN or inf: x - x is 0 where x is finite and NaN elsewhere, and a sum keeps
    a NaN. In LiteRT that is two float passes, cheaper than is_finite and a bool reduction."""
    return tf.math.is_finite(tf.reduce_sum(x - x))


def _exact_shape(value, name, feature_shape):
    """value, through an op that fails unless its shape is [rows, *feature_shape] (a scalar for None).

    LiteRT resizes an input to whatever it is given, and the TFLite converter trusts the declared
    signature shape: it folds tf.shape and tf.rank, and drops reshapes to it, while TFLite's
    broadcasting and flattening ops answer for a regrouped (2, 1, 8, 8) or a broadcast (3, 1)
    batch. A concatenation with a template row (a stack with a template scalar) fails in LiteRT and
    TensorFlow alike unless the rank and every dimension but the first match.
    """
    if feature_shape is None:
        # A sum, not a slice, of the stack: grappler folds stack([0, value])[1] back into value. Its
        # name is what TensorFlow's error shows, as grappler also folds any assertion on a shape that
        # the signature declares fully.
        stacked = tf.stack([tf.zeros([], value.dtype), value], name=f"{name}_must_be_a_scalar")
        return tf.reduce_sum(stacked)
    with tf.control_dependencies([_assert_shape(value, name, feature_shape)]):
        return tf.concat([tf.zeros([1, *feature_shape], value.dtype), value], axis=0)[1:]


def _assert_shape(value, name, feature_shape):
    """A tf.debugging.Assert that value's shape is [rows, *feature_shape]."""
    rank = 1 + len(feature_shape)
    shape = tf.shape(value)
    # The rank counted through tf.where: grappler folds tf.rank(value) and tf.size(tf.shape(value))
    # from the declared signature shape, which a caller need not have respected.
    actual_rank = tf.shape(tf.where(shape >= 0))[0]
    first = tf.concat([shape, tf.zeros([rank], tf.int32)], axis=0)[:rank]
    expected = tf.concat([first[:1], tf.constant(feature_shape, tf.int32)], axis=0)
    matches = tf.equal(actual_rank, rank) & tf.reduce_all(tf.equal(first, expected))
    wanted = f"shape (batch, {', '.join(map(str, feature_shape))})"
    return tf.debugging.Assert(matches, [f"{name}: expected {wanted}; got shape", shape], summarize=-1)


def _unseed_graph():
    """Drops the graph-level seed `keras.utils.set_random_seed` put on the graph being traced, so
    random ops get seed 0: TensorFlow and LiteRT then seed them afresh each time a model is loaded."""
    tf.compat.v1.get_default_graph().seed = None


def _posterior_sample(model, q, num_samples, batch_size):
    """z_k = reparameterize(q, eps_k) with eps [K, B, latent_dim] ~ N(0, I), and eps itself."""
    eps = tf.random.normal(tf.stack([num_samples, batch_size, model.latent_dim]))
    return model.posterior_head.reparameterize(q, eps), eps


def _stddev(q):
    """q's marginal standard deviations; for a full covariance L L^T, the row norms of L (TFP's
    `stddev` takes the diagonal with MatrixDiagPart, which TFLite has no builtin for)."""
    if isinstance(q, tfd.MultivariateNormalTriL):
        return tf.sqrt(tf.reduce_sum(tf.square(q.scale.to_dense()), axis=-1))
    return q.stddev()


def _log_q(q, z, eps):
    """log q(z|x) for z = reparameterize(q, eps). For the full-covariance posterior this is
    log N(eps; 0, I) - log |det L|, which avoids the triangular solve TFLite has no builtin for."""
    if isinstance(q, tfd.MultivariateNormalTriL):
        log_normal = -0.5 * tf.reduce_sum(tf.square(eps), axis=-1)
        return log_normal - 0.5 * eps.shape[-1] * math.log(2 * math.pi) - _log_abs_det(q)
    return q.log_prob(z)


def _log_abs_det(q):
    """log |det L| of q's lower-triangular scale L: the sum of log |L_ii|, without MatrixDiagPart."""
    scale = q.scale.to_dense()
    diagonal = tf.reduce_sum(scale * tf.eye(scale.shape[-1]), axis=-1)
    return tf.reduce_sum(tf.math.log(tf.abs(diagonal)), axis=-1)


def _kl_divergence(q, p, z, eps):
    """KL(q || p) as the model computes it (analytic where TFP registers it, else Monte Carlo over z),
    in builtin ops: the full-covariance posterior against a diagonal normal prior is written out."""
    if isinstance(q, tfd.MultivariateNormalTriL) and isinstance(p, tfd.Independent) and isinstance(
        p.distribution, tfd.Normal
    ):
        loc, scale = p.distribution.loc, p.distribution.scale
        trace = tf.reduce_sum(tf.square(q.scale.to_dense() / scale[..., :, None]), axis=[-2, -1])
        mahalanobis = tf.reduce_sum(tf.square((q.mean() - loc) / scale), axis=-1)
        log_det_ratio = tf.reduce_sum(tf.math.log(scale), axis=-1) - _log_abs_det(q)
        return 0.5 * (trace + mahalanobis - q.event_shape[-1]) + log_det_ratio
    try:
        return tfd.kl_divergence(q, p)
    except NotImplementedError:
        return tf.reduce_mean(_log_q(q, z, eps) - p.log_prob(z), axis=0)


def _elbo(model, x):
    """A one-sample ELBO per example, the estimator of `model.elbo(x)`."""
    q = model.encode(x)
    z, eps = _posterior_sample(model, q, 1, tf.shape(x)[0])
    reconstruction = tf.reduce_mean(model._log_likelihood(x, z), axis=0)
    return reconstruction - _kl_divergence(q, model.prior, z, eps)


def _importance_weighted(model, x, num_samples):
    """log p(x) ~= logsumexp_k log w_k - log K, with the K samples taken in chunks by a while loop."""
    batch_size = tf.shape(x)[0]
    q, prior = model.encode(x), model.prior
    # At least one row: an empty batch gets an empty answer, not a division by zero.
    chunk = _CHUNK_ELEMENTS // (tf.maximum(batch_size, 1) * int(np.prod(model.event_shape)))
    chunk = tf.clip_by_value(chunk, 1, num_samples)

    def body(done, total):
        k = tf.minimum(chunk, num_samples - done)
        z, eps = _posterior_sample(model, q, k, batch_size)
        log_weights = model._log_likelihood(x, z) + prior.log_prob(z) - _log_q(q, z, eps)
        return done + k, tf.reduce_logsumexp(tf.concat([total[None], log_weights], axis=0), axis=0)

    start = tf.fill([batch_size], -np.inf)
    _, total = tf.while_loop(lambda done, _: done < num_samples, body, (tf.constant(0), start))
    return total - math.log(num_samples)


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
