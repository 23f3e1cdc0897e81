"""Models with a 2-D latent trained on scikit-learn's digits, and the checks every such model passes:
its log p(x) agrees with quadrature, it survives a Keras file, and its SavedModel and LiteRT exports
answer as it does. `test_models.py` (tfvae's own heads) and `test_custom_heads.py` (a user's) share them."""

import math
import os

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from sklearn.datasets import load_digits

import tfvae
from quadrature import assert_same_estimator, exact_log_prob, importance_sampling_stderr

DIGITS = load_digits().data.astype(np.float32)  # 1797 x 64 counts 0..16


def digits_as(kind):
    """The digits as `kind` of data, (train [1500], test [297]): "grey" in [0, 1], "levels" (8-bit k/255),
    "counts" (0..4) or "binary"."""
    if kind == "grey":
        x = DIGITS / 16.0
    elif kind == "levels":  # what the discretized logistic models
        x = np.round(DIGITS / 16.0 * 255.0) / 255.0
    elif kind == "counts":
        # Counts 0..4: a posterior that a Gaussian q fits well enough for K = 5000 importance samples
        # to converge (with 0..16 the weights are heavy-tailed).
        x = np.floor(DIGITS / 4.0)
    else:
        x = (DIGITS / 16.0 > 0.5).astype(np.float32)
    return x[:1500], x[1500:]


def two_d_model(likelihood="bernoulli", prior="normal", body=lambda: tfvae.networks.MLP([64])):
    return tfvae.VAE(input_shape=(64,), latent_dim=2, encoder=body(), decoder=body(), likelihood=likelihood,
                     prior=prior, seed=0)


def train(name, build, kind):
    """(name, model, x_test, history) after 30 epochs of `build()` on the digits as `kind`."""
    keras.utils.set_random_seed(0)
    model = build()
    model.compile(keras.optimizers.Adam(3e-3))
    x_train, x_test = digits_as(kind)
    history = model.fit(x_train, epochs=30, batch_size=100, verbose=0)
    return name, model, x_test, history.history


def grid_around_posteriors(model, x, spacing=0.04):
    """A quadrature grid, spaced `spacing`, that holds 6 standard deviations of every q(z|x): where
    p(x|z) p(z) has its mass. A learned prior lets the posteriors wander far from 0."""
    q = model.encode(x)
    mean, stddev = q.mean().numpy(), q.stddev().numpy()
    center = (mean.min(axis=0) + mean.max(axis=0)) / 2
    limit = float(np.max(np.abs(mean - center) + 6 * stddev))
    return {"center": center, "limit": limit, "points": 2 * math.ceil(limit / spacing) + 1}


def assert_trained_and_log_prob_is_exact(trained):
    """Training raised the ELBO, and log_prob(x, 5000) of ten test images is the quadrature's log p(x)
    within 4 of its standard errors; returns (exact, estimate, stderr) for further checks."""
    name, model, x_test, history = trained
    assert history["elbo"][-1] > history["elbo"][0] + 1.0, name
    x = x_test[:10]
    exact = exact_log_prob(model, x, **grid_around_posteriors(model, x))
    keras.utils.set_random_seed(1)
    estimate = model.log_prob(x, num_samples=5000).numpy()
    # The estimator's standard error (delta method), plus the quadrature's own error (a few thousandths).
    stderr = importance_sampling_stderr(model, x, 5000)
    np.testing.assert_array_less(np.abs(estimate - exact), 4 * stderr + 0.01)
    # log p(x) - ELBO = KL(q(z|x) || p(z|x)) >= 0: over ten examples the Monte Carlo ELBO lies below.
    assert np.mean(model.elbo(x, num_samples=200).numpy()) < np.mean(exact)
    return exact, estimate, stderr


def assert_round_trips_through_keras_files(trained, tmp_path):
    name, model, x_test, _ = trained
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.likelihood_head) is type(model.likelihood_head)
    assert type(loaded.prior_head) is type(model.prior_head)
    np.testing.assert_allclose(loaded.reconstruct(x_test[:5]), model.reconstruct(x_test[:5]), rtol=1e-5, atol=1e-6)
    z = np.array([[0.0, 0.0], [1.0, -1.0]], np.float32)
    np.testing.assert_allclose(loaded.prior.log_prob(z), model.prior.log_prob(z), rtol=1e-6)
    np.testing.assert_allclose(loaded.decode(z).log_prob(x_test[:2]), model.decode(z).log_prob(x_test[:2]), rtol=1e-6)


def assert_exports_with_parity(trained, tmp_path):
    """SavedModel and LiteRT answer reconstruct as the model does, the LiteRT log_prob signature is the
    model's K = 200 estimator, and both sample."""
    name, model, x_test, _ = trained
    directory = str(tmp_path / name)
    manifest = tfvae.export.save(model, directory, sample_inputs=x_test, log_prob_samples=200)
    for signature in ("encode", "decode"):
        assert manifest["parity"]["max_abs_diff"][signature]["tflite"] < 1e-4, signature
    x = x_test[:8]
    saved = tf.saved_model.load(os.path.join(directory, "saved_model")).signatures
    interpreter = Interpreter(model_path=os.path.join(directory, "model.tflite"))
    expected = model.reconstruct(x).numpy()
    from_saved_model = saved["reconstruct"](x=tf.constant(x))["x_mean"].numpy()
    from_tflite = interpreter.get_signature_runner("reconstruct")(x=x)["x_mean"]
    for actual in (from_saved_model, from_tflite):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    # The TFLite log_prob signature (K = 200, unseeded) is the estimator model.log_prob(x, 200) is.
    runner = interpreter.get_signature_runner("log_prob")
    keras.utils.set_random_seed(2)
    assert_same_estimator(lambda: runner(x=x)["log_prob"], model, x, num_samples=200)
    for sampled in (saved["sample"](num_samples=tf.constant(5))["x_mean"].numpy(),
                    interpreter.get_signature_runner("sample")(num_samples=np.int32(5))["x_mean"]):
        assert sampled.shape == (5, 64) and np.all(np.isfinite(sampled))
