"""Heads written by a user, in this file only: tfvae trains, saves, scores and exports them unedited.

A Poisson likelihood for counts, a two-parameter likelihood (a Normal whose loc and scale both come
from the decoder) and a prior that uses the encoder (a mixture of the posteriors of learned
pseudo-inputs, a small VampPrior). Each follows the head protocol of `tfvae.heads`.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_probability import distributions as tfd

import tfvae
from digits_models import (
    DIGITS,
    assert_exports_with_parity,
    assert_round_trips_through_keras_files,
    assert_trained_and_log_prob_is_exact,
    digits_as,
    train,
    two_d_model,
)
from quadrature import exact_log_prob

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


def _model(likelihood="bernoulli", prior="normal"):
    return two_d_model(likelihood, prior)


CASES = {
    "poisson": (lambda: _model(likelihood=Poisson(64)), "counts"),
    "two_parameter": (lambda: _model(likelihood=HeteroscedasticNormal(64)), "grey"),
    "encoder_prior": (lambda: _model(prior=PseudoInputMixture(4, 64)), "binary"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def trained(request):
    return train(request.param, *CASES[request.param])


def test_trains_and_log_prob_matches_quadrature(trained):
    assert_trained_and_log_prob_is_exact(trained)


def test_round_trips_through_keras_files(trained, tmp_path):
    assert_round_trips_through_keras_files(trained, tmp_path)


def test_exports_to_saved_model_and_tflite_with_parity(trained, tmp_path):
    assert_exports_with_parity(trained, tmp_path)


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


@pytest.mark.slow
def test_a_head_with_ops_tflite_lacks_is_refused_and_nothing_is_written(tmp_path):
    keras.utils.set_random_seed(0)
    model = _model(likelihood=LgammaPoisson(64))
    x_train, x_test = digits_as("counts")
    model.fit(x_train[:200], epochs=1, batch_size=100, verbose=0)
    with pytest.raises(ValueError, match=r"tflite: the model uses TensorFlow ops that TFLite has no builtin for \(.*Lgamma"):
        tfvae.export.save(model, str(tmp_path / "export"), sample_inputs=x_test)
    assert list(tmp_path.iterdir()) == []
    manifest = tfvae.export.save(model, str(tmp_path / "export"), tflite=False, sample_inputs=x_test)
    assert manifest["files"].keys() == {"saved_model"}


class _Likelihood(keras.layers.Layer):
    """A Bernoulli likelihood over 64 pixels whose `distribution` is the test's `make(logits)`."""

    def __init__(self, make, **kwargs):
        super().__init__(**kwargs)
        self.make, self.dense = make, keras.layers.Dense(64)

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, features):
        return self.dense(features)

    def distribution(self, logits):
        return self.make(logits)


class _Posterior(keras.layers.Layer):
    """A diagonal Gaussian posterior over 2 dimensions whose `distribution` is the test's `make(loc, scale)`."""

    def __init__(self, make, **kwargs):
        super().__init__(**kwargs)
        self.make, self.dense = make, keras.layers.Dense(4)

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, features):
        return self.dense(features)

    def distribution(self, params):
        return self.make(params[..., :2], tf.nn.softplus(params[..., 2:]) + 0.1)


class _Prior(keras.layers.Layer):
    def __init__(self, make, **kwargs):
        super().__init__(**kwargs)
        self.make, self.built = make, True

    def distribution(self):
        return self.make()


def _bernoulli(logits):
    return tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), 1)


@pytest.mark.parametrize("role, head, message", [
    # One distribution per (x_j, z_i) pair: it trained on B x B pairs and elbo returned a (B, B) matrix.
    ("likelihood", _Likelihood(lambda l: tfd.Independent(tfd.Bernoulli(logits=l[..., None, :], dtype=tf.float32), 1)),
     "likelihood: for a batch of shape (2, 2) the head gives a distribution of batch shape (2, 2, 1); expected (2, 2)"),
    ("posterior", _Posterior(lambda loc, scale: tfd.Independent(tfd.Normal(loc[:, None], scale[:, None]), 1)),
     "posterior: for a batch of shape (2,) the head gives a distribution of batch shape (2, 1); expected (2,)"),
    # A prior with its own batch made `sample` return (n, 5, 64).
    ("prior", _Prior(lambda: tfd.Independent(tfd.Normal(tf.zeros([5, 2]), 1.0), 1)),
     "prior: for the prior the head gives a distribution of batch shape (5,); expected (), one distribution per model"),
    ("likelihood", _Likelihood(lambda l: tf.sigmoid(l)),
     "likelihood: the head's distribution(...) must return a tfp.distributions.Distribution; got"),
    ("prior", _Prior(lambda: tf.zeros([2])),
     "prior: the head's distribution(...) must return a tfp.distributions.Distribution; got"),
    # float64 parameters: a Sub TypeError deep in TFP before.
    ("likelihood", _Likelihood(lambda l: tfd.Independent(tfd.Normal(tf.cast(l, tf.float64), 1.0), 1)),
     "likelihood: the head's log-density failed on float32 values of a batch of shape (2, 2) (TypeError"),
    # A head written for [B, 64] parameters only: it split the wrong axis once K > 1.
    ("likelihood", _Likelihood(lambda l: _bernoulli(tf.reshape(l, (-1, 64)))),
     "likelihood: for a batch of shape (2, 2) the head gives a distribution of batch shape (4,); expected (2, 2)"),
    ("likelihood", _Likelihood(lambda l: tfd.Independent(tfd.Bernoulli(logits=l, dtype=tf.float32), 2)),
     "likelihood: the head gives distributions with event shape (2, 64), but the model's input_shape is (64,)"),
])
def test_a_head_that_breaks_the_protocol_is_refused_when_the_model_is_built(role, head, message):
    with pytest.raises((ValueError, TypeError)) as error:
        tfvae.VAE(input_shape=(64,), latent_dim=2, **{role: head})
    assert message in str(error.value)


def poisson_counts_model():
    """The estimates issue's case, shared by tests/test_estimates.py and benchmarks/estimators.py: the
    Poisson head above over the digits as the counts 0..16 they are, latent 2, 40 epochs, where the
    encoder is a poor proposal for some examples; (model, 60 test images, their log p(x) by quadrature)."""
    counts = DIGITS  # digits_models' counts 0..16
    keras.utils.set_random_seed(0)
    model = tfvae.VAE(input_shape=(64,), latent_dim=2, likelihood=Poisson(64))
    model.fit(counts[:1500], epochs=40, batch_size=100, verbose=0)
    x = counts[1500:1560]
    return model, x, exact_log_prob(model, x, limit=8.0, points=401)
