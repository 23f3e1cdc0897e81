"""The graphs `tfvae.export` writes: one tf.function per signature, with named inputs and outputs.

The functions call the model through closures and the module tracks only its variables: a Keras
model tracked as a `tf.Module` attribute can leave the TFLite converter with uninitialized
variables, and LiteRT then returns NaN silently.

The estimators are `tfvae.objectives`', the ones training and evaluation use; only the noise differs
(TF's normal op). Ops TFLite has no builtin for are avoided: TFP's mixture sampling (stateless random
ops) here, and the full-covariance posterior's triangular solve and matrix diagonal in its head.

Every input is checked in the graph, whatever runs it (TensorFlow, TF Serving, LiteRT): its exact
shape, finiteness, and for x the likelihood head's `in_support`; a bad one fails the call instead
of being regrouped, broadcast or answered with NaN. TensorFlow gets assertion messages naming the
input; the TFLite converter drops assertions, so the checks are also made of builtin ops that
LiteRT fails to run (see `_checked`).

Every random op is built without a seed, whatever `keras.utils.set_random_seed` set: a seed in the
graph would make every freshly loaded model draw the same first samples. `sample_seeded` gives
reproducible draws instead, from a counter-based hash made of TFLite builtin integer ops, so the
same seed gives the same images in TensorFlow and in LiteRT.

A conditional model's signatures each take one more input, `condition`: one row per x, z or draw
(`signatures_of`), checked like the others.
"""

import inspect
import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from tensorflow_probability import distributions as tfd

from tfvae import heads, objectives

class Signature(NamedTuple):
    """One exported signature: its named inputs and outputs, and how `tfvae.export` checks it."""

    inputs: tuple
    outputs: tuple
    # "exact": every output within tolerance of the Keras model's; "estimate": a Monte Carlo estimate
    # per example, finite, its batch mean recorded beside Keras's; "draw": random draws, finite.
    parity: str


# The export's signatures, defined once: `tfvae.export` writes, converts, checks and describes these;
# export/README.md documents each (a test holds it to this list).
SIGNATURES = {
    "encode": Signature(("x",), ("z_mean", "z_stddev"), "exact"),
    "decode": Signature(("z",), ("x_mean",), "exact"),
    "reconstruct": Signature(("x",), ("x_mean",), "exact"),
    "sample": Signature(("num_samples",), ("x_mean",), "draw"),
    "sample_seeded": Signature(("num_samples", "seed"), ("x_mean",), "exact"),
    "elbo": Signature(("x",), ("elbo",), "estimate"),
    "log_prob": Signature(("x",), ("log_prob",), "estimate"),
}
# Exported beside them when `tfvae.export.save` is given a detector (`tfvae.ood.OutlierDetector.exported`).
ANOMALY_SCORE = Signature(("x",), ("score", "p_value"), "estimate")


def signatures_of(model, detector=None):
    """The signatures of `model`'s export: `SIGNATURES` (and "anomaly_score" with a detector), each with the
    input "condition" last for a conditional model."""
    table = {**SIGNATURES, **({"anomaly_score": ANOMALY_SCORE} if detector is not None else {})}
    if model.condition_shape is None:
        return table
    return {name: s._replace(inputs=(*s.inputs, "condition")) for name, s in table.items()}


class Signatures(tf.Module):
    """The model's variables and its signature functions, ready for `tf.saved_model.save`.

    Args:
        model: a built `tfvae.VAE`.
        log_prob_samples: K, the importance samples behind the `log_prob` signature.
        detector: None, or an exportable `tfvae.ood.OutlierDetector` of the model (its `exported()`),
            for the "anomaly_score" signature.
    """

    def __init__(self, model, log_prob_samples, detector=None):
        super().__init__(name="tfvae_export")
        # The tf.Variables behind the Keras variables, as keras.export.ExportArchive tracks them.
        self.model_variables = [v.value for v in model.variables]
        event_shape, latent_dim = model.event_shape, model.latent_dim
        x_spec = tf.TensorSpec((None, *event_shape), tf.float32, name="x")
        z_spec = tf.TensorSpec((None, latent_dim), tf.float32, name="z")
        n_spec = tf.TensorSpec((), tf.int32, name="num_samples")
        seed_spec = tf.TensorSpec((), tf.int32, name="seed")
        condition_shape = model.condition_shape

        likelihood = model.likelihood_head
        support = f"finite values in the support of the {type(likelihood).__name__} likelihood"

        def valid_x(x):
            return _all_finite(x) & tf.reduce_all(heads.in_support(likelihood, x))

        def checked_x(x):
            return _checked(x, "x", event_shape, valid_x, support)

        def checked_count(num_samples):
            return _checked(num_samples, "num_samples", None, lambda n: n >= 0, "a count >= 0")

        def checked_condition(condition, rows_of):
            """The condition of a conditional model, finite and with one row per row of the tensor `rows_of`
            (or `rows_of` rows, for a count); None for an unconditional one, whose graphs stay as they were."""
            if condition is None:
                return None
            rows = rows_of if rows_of.shape.rank == 0 else tf.shape(rows_of)[0]

            def valid(c):
                return _all_finite(c) & tf.equal(tf.shape(c)[0], rows)

            return _checked(condition, "condition", condition_shape, valid, "finite values, one row per example")

        def encode(x, condition=None):
            x = checked_x(x)
            q = model.encode(x, checked_condition(condition, x))
            return {"z_mean": q.mean(), "z_stddev": heads.posterior_stddev(model.posterior_head, q)}

        def decode(z, condition=None):
            z = _checked(z, "z", (latent_dim,), _all_finite, "finite values")
            return {"x_mean": _point_estimate(model, z, checked_condition(condition, z))}

        def reconstruct(x, condition=None):
            x = checked_x(x)
            return {"x_mean": model.reconstruct(x, checked_condition(condition, x))}

        def sample(num_samples, condition=None):
            _unseed_graph()
            num_samples = checked_count(num_samples)
            condition = checked_condition(condition, num_samples)
            uniform = tf.random.uniform(tf.stack([num_samples, 1]))
            z = _prior_sample(model.prior, uniform, tf.random.normal(tf.stack([num_samples, latent_dim])))
            return {"x_mean": _point_estimate(model, z, condition)}

        def sample_seeded(num_samples, seed, condition=None):
            num_samples = checked_count(num_samples)
            condition = checked_condition(condition, num_samples)
            z = _prior_sample_from_seed(model.prior, num_samples, latent_dim, _checked(seed, "seed", None))
            return {"x_mean": _point_estimate(model, z, condition)}

        def elbo(x, condition=None):
            _unseed_graph()
            x = checked_x(x)
            return {"elbo": _elbo(model, x, checked_condition(condition, x))}

        def log_prob(x, condition=None):
            _unseed_graph()
            x = checked_x(x)
            condition = checked_condition(condition, x)
            terms = objectives.importance_sampled(model, x, log_prob_samples, _noise(latent_dim), condition)
            return {"log_prob": terms["log_prob"]}

        def anomaly_score(x, condition=None):
            _unseed_graph()
            x = checked_x(x)
            if detector.takes_binary_input():
                x = _checked(x, "x", event_shape, lambda v: tf.reduce_all(tf.equal(v, tf.round(v))),
                             "binary values (0 or 1): the detector codes x as a binary image")
            condition = checked_condition(condition, x)
            terms = objectives.importance_sampled(model, x, detector.method.num_samples, _noise(latent_dim), condition)
            return detector.graph_outputs(terms, x)

        functions = {
            "encode": encode,
            "decode": decode,
            "reconstruct": reconstruct,
            "sample": sample,
            "sample_seeded": sample_seeded,
            "elbo": elbo,
            "log_prob": log_prob,
            **({"anomaly_score": anomaly_score} if detector is not None else {}),
        }
        specs = {"x": x_spec, "z": z_spec, "num_samples": n_spec, "seed": seed_spec}
        if condition_shape is not None:
            specs["condition"] = tf.TensorSpec((None, *condition_shape), tf.float32, name="condition")
        # The signatures this model exports, its inputs included; `tfvae.export` checks these.
        self.table = signatures_of(model, detector)
        assert functions.keys() == self.table.keys(), "each exported signature has one function here"
        # The Python functions themselves run eagerly on the Keras model: the reference of the parity checks.
        self.python_functions = functions
        self.functions = {
            name: tf.function(
                _taking(functions[name], signature.inputs),
                input_signature=[specs[i] for i in signature.inputs],
                autograph=False,
            )
            for name, signature in self.table.items()
        }

    def signatures(self):
        """{signature name: concrete function}, with `serving_default` the same as `encode`."""
        with heads.ops.litert_forms():  # the graphs LiteRT runs, SavedModel alike: one form for both
            concrete = {name: f.get_concrete_function() for name, f in self.functions.items()}
        return {**concrete, "serving_default": concrete["encode"]}


def _taking(function, inputs):
    """`function`, whose parameters tf.function reads as exactly `inputs`: an unconditional model's graphs
    then have no `condition` parameter at all (not even a None one in their input signature)."""
    parameter = inspect.Parameter.POSITIONAL_OR_KEYWORD
    function.__signature__ = inspect.Signature([inspect.Parameter(name, parameter) for name in inputs])
    return function


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


def _point_estimate(model, z, condition=None):
    """The x that p(x|z) (or p(x|z, c)) stands for (its mean unless the likelihood head says otherwise)."""
    return heads.point_estimate(model.likelihood_head, model.likelihood(z, condition))


def _noise(latent_dim):
    """eps ~ N(0, I) [k, B, latent_dim] from TF's normal op, seeded afresh at every load (see `_unseed_graph`)."""
    return lambda k, batch_size: tf.random.normal(tf.stack([k, batch_size, latent_dim]))


def _elbo(model, x, condition=None):
    """A one-sample ELBO per example, the estimator of `model.elbo(x)`."""
    eps = _noise(model.latent_dim)(1, tf.shape(x)[0])
    sample = objectives.posterior_sample(model, x, model.posterior(x, condition), eps, condition)
    return objectives.elbo(sample)[0]


def _prior_sample(prior, uniform, eps):
    """z ~ p(z) from noise: `uniform` [n, 1] ~ U(0, 1) picks a mixture component, `eps` [n, latent_dim]
    ~ N(0, I) places z in it. TFP's own mixture sampling uses stateless ops TFLite lacks. A hierarchy's
    top layer is drawn so, and the layers below from the rest of eps through their heads."""
    if isinstance(prior, heads.Chain):
        return prior.descend(_prior_sample(prior.top, uniform, prior.split(eps)[-1]), eps)
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
    normal = heads.diagonal_normal(distribution)
    if normal is None:
        raise TypeError(
            "export: sampling supports an Independent Normal prior or a mixture of them (the priors tfvae "
            f"ships); got {type(distribution).__name__}."
        )
    return normal


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


class Densities(tf.Module):
    """The terms every estimator is made of, for the export's parity check only (not a signature of the export).

    `densities(x, eps)` (and `condition` for a conditional model) gives, for z = reparameterize(q(z|x), eps)
    with eps [1, B, latent_dim], the per-example log p(x|z), log q(z|x), log p(z) and KL(q || p). The
    `elbo` and `log_prob` signatures are made of these and differ from Keras's by their noise alone;
    these take the noise as an input, so each runtime's numbers are checked against TensorFlow's on
    every parity row: a head whose density is wrong on device fails there.
    """

    def __init__(self, model):
        super().__init__(name="tfvae_densities")
        self.model_variables = [v.value for v in model.variables]
        specs = [tf.TensorSpec((None, *model.event_shape), tf.float32, name="x"),
                 tf.TensorSpec((1, None, model.latent_dim), tf.float32, name="eps")]
        if model.condition_shape is not None:
            specs.append(tf.TensorSpec((None, *model.condition_shape), tf.float32, name="condition"))

        def densities(x, eps, condition=None):
            sample = objectives.posterior_sample(model, x, model.posterior(x, condition), eps, condition)
            return {"log_likelihood": sample.log_likelihood[0], "log_posterior": sample.log_q[0],
                    "log_prior": sample.p.log_prob(sample.z)[0], "kl": objectives.kl_divergence(sample)}

        self.densities = tf.function(densities, input_signature=specs, autograph=False)

    def concrete_function(self):
        """`densities` traced as the export's signatures are, in the heads' LiteRT forms."""
        with heads.ops.litert_forms():
            return self.densities.get_concrete_function()
