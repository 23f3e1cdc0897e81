"""Heads written by a user, in this file only: tfvae trains, saves, scores and exports them unedited.

A Poisson likelihood for counts, a two-parameter likelihood (a Normal whose loc and scale both come
from the decoder) and a prior that uses the encoder (a mixture of the posteriors of learned
pseudo-inputs, a small VampPrior). Each follows the head protocol of `tfvae.distributions`.
"""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from sklearn.datasets import load_digits
from tensorflow_probability import distributions as tfd

import tfvae
from quadrature import assert_same_estimator, exact_log_prob, importance_sampling_stderr

# log k! for the counts a Poisson head accepts: a table lookup is a TFLite builtin, lgamma is not.
_MAX_COUNT = 255
_LOG_FACTORIALS = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, _MAX_COUNT + 1)))]).astype(np.float32)


class _PoissonLogRate(tfd.Poisson):
    """tfd.Poisson with log k! from a table, so its log_prob runs on TFLite's builtin ops."""

    def _log_prob(self, x):
        log_factorial = tf.gather(tf.constant(_LOG_FACTORIALS), tf.cast(x, tf.int32))
        return x * self.log_rate - tf.exp(self.log_rate) - log_factorial


@keras.saving.register_keras_serializable(package="test_custom_heads")
class Poisson(keras.layers.Layer):
    """p(x|z) = prod_i Poisson(x_i; exp(log_rate_i(z))) for counts 0..255."""

    support = f"whole numbers from 0 to {_MAX_COUNT}"

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        self.size = size
        self.dense = keras.layers.Dense(size)

    def get_config(self):
        return {**super().get_config(), "size": self.size}

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, features):
        return self.dense(features)

    def distribution(self, log_rate):
        return tfd.Independent(_PoissonLogRate(log_rate=log_rate), reinterpreted_batch_ndims=1)

    def in_support(self, x):
        return (x >= 0) & (x <= _MAX_COUNT) & (x == tf.round(x))


@keras.saving.register_keras_serializable(package="test_custom_heads")
class HeteroscedasticNormal(keras.layers.Layer):
    """p(x|z) = prod_i N(x_i; loc_i(z), scale_i(z)): two parameters per dimension, [B, D, 2]."""

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        self.size = size
        self.dense = keras.layers.Dense(2 * size)

    def get_config(self):
        return {**super().get_config(), "size": self.size}

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, features):
        return keras.ops.reshape(self.dense(features), (-1, self.size, 2))

    def distribution(self, params):
        scale = tf.nn.softplus(params[..., 1]) + 0.1
        return tfd.Independent(tfd.Normal(params[..., 0], scale), reinterpreted_batch_ndims=1)


@keras.saving.register_keras_serializable(package="test_custom_heads")
class PseudoInputMixture(keras.layers.Layer):
    """p(z) = (1/C) sum_c q(z | u_c): the encoder's posteriors of C learned pseudo-inputs u_c."""

    def __init__(self, num_components, input_size, **kwargs):
        super().__init__(**kwargs)
        self.num_components, self.input_size = num_components, input_size
        self.raw_inputs = self.add_weight(
            shape=(num_components, input_size), initializer=keras.initializers.RandomUniform(-1.0, 1.0), name="u"
        )
        self.built = True

    def get_config(self):
        return {**super().get_config(), "num_components": self.num_components, "input_size": self.input_size}

    def distribution(self, model):
        posteriors = model.posterior(tf.sigmoid(self.raw_inputs))  # pseudo-inputs in [0, 1], like the data
        return tfd.MixtureSameFamily(tfd.Categorical(logits=tf.zeros([self.num_components])), posteriors)


def _model(likelihood=None, prior=None):
    body = lambda: tfvae.networks.MLP([64])  # noqa: E731
    return tfvae.VAE(
        input_shape=(64,),
        latent_dim=2,
        encoder=body(),
        decoder=body(),
        likelihood=likelihood or "bernoulli",
        prior=prior or "normal",
        seed=0,
    )


def _data(kind):
    counts = load_digits().data.astype(np.float32)  # 1797 x 64 counts 0..16
    if kind == "counts":
        # Coarser counts 0..4: a Poisson posterior that a Gaussian q fits well enough for K = 5000
        # importance samples to converge (with 0..16 their weights are heavy-tailed).
        counts = np.floor(counts / 4)
        return counts[:1500], counts[1500:]
    if kind == "grey":
        x = counts / 16.0
    else:
        x = (counts / 16.0 > 0.5).astype(np.float32)
    return x[:1500], x[1500:]


CASES = {
    "poisson": (lambda: _model(likelihood=Poisson(64)), "counts"),
    "two_parameter": (lambda: _model(likelihood=HeteroscedasticNormal(64)), "grey"),
    "encoder_prior": (lambda: _model(prior=PseudoInputMixture(4, 64)), "binary"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def trained(request):
    build, kind = CASES[request.param]
    keras.utils.set_random_seed(0)
    model = build()
    model.compile(keras.optimizers.Adam(3e-3))
    x_train, x_test = _data(kind)
    history = model.fit(x_train, epochs=30, batch_size=100, verbose=0)
    return request.param, model, x_test, history.history


def test_trains_and_log_prob_matches_quadrature(trained):
    name, model, x_test, history = trained
    assert history["elbo"][-1] > history["elbo"][0] + 1.0, name
    x = x_test[:10]
    # Centred on the posteriors: a learned prior moves z away from 0.
    exact = exact_log_prob(model, x, limit=10.0, points=501, center=model.encode(x).mean().numpy().mean(axis=0))
    keras.utils.set_random_seed(1)
    estimate = model.log_prob(x, num_samples=5000).numpy()
    # Within 4 standard errors of the estimator (delta method: std(w) / (mean(w) sqrt(K))), plus the
    # quadrature's own error, a few thousandths here.
    np.testing.assert_array_less(np.abs(estimate - exact), 4 * importance_sampling_stderr(model, x, 5000) + 0.01)
    # log p(x) - ELBO = KL(q(z|x) || p(z|x)) >= 0: over ten examples the Monte Carlo ELBO lies below.
    assert np.mean(model.elbo(x, num_samples=200).numpy()) < np.mean(exact)


def test_round_trips_through_keras_files(trained, tmp_path):
    name, model, x_test, _ = trained
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.likelihood_head) is type(model.likelihood_head)
    assert type(loaded.prior_head) is type(model.prior_head)
    np.testing.assert_allclose(loaded.reconstruct(x_test[:5]), model.reconstruct(x_test[:5]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.prior.log_prob(np.zeros((1, 2))), model.prior.log_prob(np.zeros((1, 2))), rtol=1e-6)


def test_exports_to_saved_model_and_tflite_with_parity(trained, tmp_path):
    name, model, x_test, _ = trained
    directory = str(tmp_path / name)
    manifest = tfvae.export.save(model, directory, sample_inputs=x_test, log_prob_samples=200)
    assert manifest["parity"]["max_abs_diff"]["encode"]["tflite"] < 1e-4
    x = x_test[:8]
    saved = tf.saved_model.load(os.path.join(directory, "saved_model")).signatures
    interpreter = Interpreter(model_path=os.path.join(directory, "model.tflite"))
    expected = tfvae.distributions.point_estimate(model.likelihood_head, model.likelihood(model.encode(x).mean()))
    from_saved_model = saved["reconstruct"](x=tf.constant(x))["x_mean"].numpy()
    from_tflite = interpreter.get_signature_runner("reconstruct")(x=x)["x_mean"]
    for actual in (from_saved_model, from_tflite):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    # The TFLite log_prob signature (K = 200, unseeded) is the estimator model.log_prob(x, 200) is.
    runner = interpreter.get_signature_runner("log_prob")
    keras.utils.set_random_seed(2)
    assert_same_estimator(lambda: runner(x=x)["log_prob"], model, x, num_samples=200)
    samples = interpreter.get_signature_runner("sample")(num_samples=np.int32(5))["x_mean"]
    assert samples.shape == (5, 64) and np.all(np.isfinite(samples))


def test_a_users_head_refuses_data_outside_its_support():
    model = _model(likelihood=Poisson(64))
    with pytest.raises(ValueError, match=r"x: the Poisson likelihood expects whole numbers from 0 to 255; got 1 values"):
        model.elbo(np.full((2, 64), 3.0, np.float32) + np.eye(2, 64, dtype=np.float32) * np.array([[0.5], [0.0]]))
    assert math.isfinite(float(model.elbo(np.full((2, 64), 3.0, np.float32)).numpy().mean()))


@keras.saving.register_keras_serializable(package="test_custom_heads")
class LgammaPoisson(Poisson):
    """TFP's own Poisson, whose log_prob needs Lgamma: an op TFLite has no builtin for."""

    def distribution(self, log_rate):
        return tfd.Independent(tfd.Poisson(log_rate=log_rate), reinterpreted_batch_ndims=1)


def test_a_head_with_ops_tflite_lacks_is_refused_and_nothing_is_written(tmp_path):
    keras.utils.set_random_seed(0)
    model = _model(likelihood=LgammaPoisson(64))
    x_train, x_test = _data("counts")
    model.fit(x_train[:200], epochs=1, batch_size=100, verbose=0)
    with pytest.raises(ValueError, match=r"tflite: the model uses TensorFlow ops that TFLite has no builtin for \(.*Lgamma"):
        tfvae.export.save(model, str(tmp_path / "export"), sample_inputs=x_test)
    assert list(tmp_path.iterdir()) == []
    manifest = tfvae.export.save(model, str(tmp_path / "export"), tflite=False, sample_inputs=x_test)
    assert manifest["files"].keys() == {"saved_model"}
