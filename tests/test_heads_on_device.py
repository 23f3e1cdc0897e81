"""Each head's densities on LiteRT against TensorFlow, at parameters a long-trained model reaches.

LiteRT's SOFTPLUS overflows past 88.7 (TensorFlow's does not), so a head that used it, or that
multiplied an unused -inf term by a 0 mask, gave -inf, NaN or -3.4e38 on device where TensorFlow gave
a number. Here every head's log-density and point estimate are converted alone (TFLite builtins only)
and run on the real interpreter over parameters from -200 to 200 and the edges of each support.
"""

import itertools
import math

import numpy as np
import pytest
import scipy.special
import tensorflow as tf

from tfvae import heads

FLOAT32_MAX = np.finfo(np.float32).max
# Parameters around the SOFTPLUS overflow (88.7), far beyond it, and near 0 where closed forms switch to series.
EXTREMES = [-200.0, -100.0, -89.0, -88.0, -20.0, -1.0, -0.3, -0.1, -1e-3, 0.0, 1e-3, 0.1, 0.3, 1.0, 20.0, 88.0, 89.0,
            100.0, 200.0]


def _on_litert(function, *arrays, trackable=None):
    """function(*arrays) converted to TFLite (builtins only) and run on LiteRT: a list of numpy outputs."""
    from ai_edge_litert.interpreter import Interpreter

    specs = [tf.TensorSpec(a.shape, tf.float32, name=f"input_{i}") for i, a in enumerate(arrays)]
    module = tf.Module()
    module.variables_of = [] if trackable is None else [v.value for v in trackable.variables]
    with heads.ops.litert_forms():  # traced as the export traces its graphs
        concrete = tf.function(function, input_signature=specs).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    runner = interpreter.get_signature_runner()
    outputs = runner(**{f"input_{i}": a for i, a in enumerate(arrays)})
    return [outputs[k] for k in sorted(outputs)]


def _assert_device_agrees(function, *arrays, trackable=None, rtol=1e-5, atol=1e-4):
    expected = [np.asarray(t) for t in tf.nest.flatten(function(*[tf.constant(a) for a in arrays]))]
    actual = _on_litert(function, *arrays, trackable=trackable)
    for e, a in zip(expected, actual):
        assert np.all(np.isfinite(e)), "the TensorFlow reference itself is not finite"
        assert np.all(np.abs(a) < FLOAT32_MAX), f"LiteRT gave inf, NaN or +-3.4e38: {a[~(np.abs(a) < FLOAT32_MAX)]}"
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)
    return expected


def _grid(params, xs):
    """Every (parameter, x) pair as two float32 columns [N, 1]."""
    pairs = np.array(list(itertools.product(params, xs)), np.float32)
    return pairs[:, :1], pairs[:, 1:]


def _likelihood_outputs(head):
    def outputs(params, x):
        p = head.distribution(params)
        return {"log_prob": heads.log_likelihood(head, p, x),
                "point": heads.point_estimate(head, p)}
    return outputs


@pytest.mark.parametrize("name, xs", [("bernoulli", [0.0, 1.0, 0.5]), ("continuous_bernoulli", [0.0, 1.0, 0.3])])
def test_logit_likelihoods_agree_on_device_at_extreme_logits(name, xs):
    head = heads.LIKELIHOODS[name](event_shape=(1,))
    logits, x = _grid(EXTREMES, xs)
    log_prob, point = _assert_device_agrees(_likelihood_outputs(head), logits, x)
    if name == "bernoulli":  # x l - softplus(l), in float64
        np.testing.assert_allclose(log_prob, (x * logits - np.logaddexp(0, logits))[:, 0], rtol=1e-6, atol=1e-6)


def test_continuous_bernoulli_is_its_closed_form_in_float64_from_tiny_to_extreme_logits():
    head = heads.ContinuousBernoulli(event_shape=(1,))
    logits, x = _grid(np.concatenate([EXTREMES, [-0.2499, 0.2501, -0.4999, 0.5001, 5.0]]), [0.0, 0.7, 1.0])
    l = logits.astype(np.float64)[:, 0]
    safe = np.where(l == 0, 1.0, l)
    log_c = np.where(l == 0, np.log(2.0), np.log(np.abs(safe) / np.abs(np.tanh(safe / 2))))
    exact = x[:, 0] * l - np.logaddexp(0, l) + log_c
    mean = np.where(l == 0, 0.5, 1 / -np.expm1(-safe) - 1 / safe)
    p = head.distribution(tf.constant(logits))
    np.testing.assert_allclose(p.log_prob(x), exact, rtol=1e-6, atol=3e-7)
    np.testing.assert_allclose(p.mean()[:, 0], mean, rtol=1e-6, atol=3e-7)
    # TFP's own form, where it is finite, is the same density.
    tfp_form = scipy.special.xlogy(x[:, 0], scipy.special.expit(l)) + scipy.special.xlog1py(1 - x[:, 0], -scipy.special.expit(l))
    moderate = np.abs(l) < 20
    np.testing.assert_allclose((exact - log_c)[moderate], tfp_form[moderate], rtol=1e-9, atol=1e-9)


def test_continuous_bernoulli_gradients_are_finite_at_one_half_and_at_the_thresholds():
    head = heads.ContinuousBernoulli(event_shape=(1,))
    logits = tf.constant([[0.0], [0.25], [-0.25], [0.5], [-0.5], [100.0]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        p = head.distribution(logits)
        log_prob, mean = p.log_prob(tf.fill([6, 1], 0.8)), p.mean()
    grad_log_prob, grad_mean = tape.gradient(log_prob, logits), tape.gradient(mean, logits)
    assert np.all(np.isfinite(grad_log_prob)) and np.all(np.isfinite(grad_mean))
    # d/dl log p(x) = x - E[x]; at l = 0 the mean is 1/2 and its slope 1/12.
    np.testing.assert_allclose(grad_log_prob[:, 0], 0.8 - mean[:, 0], atol=2e-6)
    np.testing.assert_allclose(grad_mean[0, 0], 1 / 12, rtol=1e-5)


def test_discretized_logistic_agrees_on_device_at_the_edges_and_far_in_the_tails():
    head = heads.DiscretizedLogistic(event_shape=(1,))
    locs, log_scales, xs = [-3.0, 0.0, 0.5, 1.0, 4.0], [-7.0, -3.0, 0.0, 5.0], [0.0, 1 / 255, 128 / 255, 254 / 255, 1.0]
    rows = np.array(list(itertools.product(locs, log_scales, xs)), np.float32)
    params, x = rows[:, None, :2], rows[:, 2:]
    log_prob, _ = _assert_device_agrees(_likelihood_outputs(head), params, x, rtol=1e-5, atol=1e-3)
    assert np.all(log_prob <= 0)


@pytest.mark.parametrize("name, columns", [("poisson", 1), ("negative_binomial", 2)])
def test_count_likelihoods_agree_on_device_at_count_0_and_large_counts(name, columns):
    head = heads.LIKELIHOODS[name](event_shape=(1,))
    raw = [-100.0, -20.0, -1.0, 0.0, 1.0, 10.0, 40.0] + ([] if columns == 1 else [89.0, 100.0])
    # Up to 1e6 for the Poisson; the negative binomial's lgamma(x + r) - lgamma(x + 1) cancels in float32 at such
    # counts (ulps of 1 at 1e7, where TensorFlow and LiteRT round differently), so it is held to 1000.
    counts = [0.0, 1.0, 16.0, 1000.0] + ([1e6] if columns == 1 else [])
    rows = np.array(list(itertools.product(*([raw] * columns), counts)), np.float32)
    params = rows[:, :columns] if columns == 1 else rows[:, None, :columns]
    x = rows[:, columns:]
    # The mean, rate = exp(log rate) or total_count exp(logits), overflows in float32 past 88.7 in TensorFlow too: a
    # parameter no count model reaches. The negative binomial's total_count goes past it (softplus(100)).
    params[..., -1] = np.minimum(params[..., -1], 40.0)
    _assert_device_agrees(_likelihood_outputs(head), params, x, rtol=1e-5, atol=1e-2)


def test_gaussian_likelihood_scale_agrees_on_device_past_the_overflow():
    head = heads.Gaussian(event_shape=(1,))
    head.raw_scale.assign([100.0])  # scale = softplus(100) = 100
    loc, x = _grid([-5.0, 0.0, 5.0], [0.0, 1.0])
    log_prob, _ = _assert_device_agrees(_likelihood_outputs(head), loc, x, trackable=head)
    np.testing.assert_allclose(log_prob, -np.log(100.001) - 0.5 * math.log(2 * math.pi) - 0.5 * ((x - loc)[:, 0] / 100.001) ** 2,
                               rtol=1e-5)


@pytest.mark.parametrize("name", ["diagonal", "full"])
def test_posterior_scales_agree_on_device_past_the_overflow(name):
    head = heads.POSTERIORS[name](latent_dim=2)
    width = 4 if name == "diagonal" else 5
    params = np.array([[0.0] * width, [100.0] * width, [-100.0] * width, [89.0] * width], np.float32)

    def outputs(params):
        q = head.distribution(params)
        eps = tf.zeros([4, 2])
        z = heads.reparameterize(head, q, eps)
        return {"log_q": heads.posterior_log_prob(head, q, z, eps), "stddev": heads.posterior_stddev(head, q)}

    _, stddev = _assert_device_agrees(outputs, params, rtol=1e-5, atol=1e-3)
    if name == "diagonal":
        np.testing.assert_allclose(stddev[1:2], [[100.0001, 100.0001]], rtol=1e-6)


def test_every_exported_graph_feeds_softplus_at_most_80():
    # Training keeps TensorFlow's softplus kernel; the graphs the export converts take the capped form.
    import tfvae
    from tfvae import signatures

    model = tfvae.VAE(input_shape=(4,), latent_dim=2, likelihood="negative_binomial")
    graphs = signatures.Signatures(model, log_prob_samples=3).signatures()
    graphs["densities"] = signatures.Densities(model).concrete_function()
    for name, concrete in graphs.items():
        ops = concrete.graph.get_operations()
        softplus = [op for op in ops if op.type == "Softplus"]
        assert all(op.inputs[0].op.type == "Minimum" for op in softplus), name
    assert any(op.type == "Softplus" for op in graphs["log_prob"].graph.get_operations())
    training_graph = tf.function(lambda x: model.bound(x, 1)["bound"]).get_concrete_function(tf.zeros((2, 4)))
    assert not any(op.type == "Minimum" for op in training_graph.graph.get_operations())
