"""tfvae.VAE: the bounds it computes, how it trains, and how it round-trips."""

import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_probability import distributions as tfd

import tfvae
from tfvae import VAE


@pytest.fixture(scope="module")
def trained_2d(digits):
    """A 2-D latent model trained briefly on binarized digits: small enough to integrate exactly."""
    keras.utils.set_random_seed(1)
    model = VAE(input_shape=(64,), latent_dim=2, encoder=tfvae.networks.MLP([64]), decoder=tfvae.networks.MLP([64]))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(digits[0], epochs=15, batch_size=50, verbose=0)
    return model


def _exact_log_prob(model, x, limit=5.0, points=401):
    """log p(x) = log of the integral of p(x|z) p(z) over a z grid (midpoint rule in log space)."""
    axis = np.linspace(-limit, limit, points, dtype=np.float32)
    cell = math.log((axis[1] - axis[0]) ** 2)
    grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
    decoded = model.decode(grid)
    log_prior = model.prior.log_prob(grid).numpy()
    return np.array(
        [tf.reduce_logsumexp(decoded.log_prob(xi) + log_prior).numpy() + cell for xi in x]
    )


def test_log_prob_matches_quadrature_and_the_elbo_lies_below(trained_2d, digits):
    x = digits[1][:12]
    exact = _exact_log_prob(trained_2d, x)
    estimate = trained_2d.log_prob(x, num_samples=2000).numpy()
    assert estimate.shape == (12,)
    np.testing.assert_allclose(estimate, exact, atol=0.1)
    assert abs(np.mean(estimate - exact)) < 0.03
    # The ELBO's gap is KL(q(z|x) || p(z|x)) >= 0 for every x, and for some x here it is a few
    # hundredths of a nat: the Monte Carlo ELBO (20 x 500 samples) lies below log p(x) up to
    # 4 of its own standard errors.
    elbos = np.stack([trained_2d.elbo(x, num_samples=500).numpy() for _ in range(20)])
    assert elbos.shape == (20, 12)
    stderr = elbos.std(axis=0, ddof=1) / np.sqrt(len(elbos))
    assert np.all(elbos.mean(axis=0) < exact + 4 * stderr)
    assert np.mean(exact - elbos.mean(axis=0)) > 0


def test_iwae_bound_tightens_with_more_samples(trained_2d, digits):
    x = digits[1][:50]
    bounds = [trained_2d.log_prob(x, num_samples=k).numpy().mean() for k in (1, 10, 1000)]
    assert bounds[0] < bounds[1] < bounds[2]
    np.testing.assert_allclose(bounds[0], trained_2d.elbo(x, num_samples=100).numpy().mean(), atol=0.5)


def test_held_out_elbo_rises_far_above_its_value_at_initialization(digits):
    x_train, x_test = digits
    model = VAE(input_shape=(64,), latent_dim=8)
    before = model.elbo(x_test, num_samples=10).numpy().mean()
    history = model.fit(x_train, epochs=8, batch_size=50, validation_data=(x_test,), verbose=0)
    after = model.elbo(x_test, num_samples=10).numpy().mean()
    # Untrained, p(x|z) is near uniform: about 64 ln 2 = 44.4 nats; a trained model explains far more.
    assert before < -40
    assert after > before + 15
    for name in ("loss", "elbo", "reconstruction", "kl", "val_loss", "val_elbo", "val_reconstruction", "val_kl"):
        assert len(history.history[name]) == 8
    last = {k: v[-1] for k, v in history.history.items()}
    np.testing.assert_allclose(last["elbo"], last["reconstruction"] - last["kl"], rtol=1e-5)
    np.testing.assert_allclose(last["loss"], -last["elbo"], rtol=1e-5)
    np.testing.assert_allclose(last["val_elbo"], after, atol=1.0)


def test_one_train_step_gives_finite_nonzero_gradients_to_every_weight(digits):
    model = VAE(input_shape=(64,), latent_dim=4, posterior="full", prior="mixture", likelihood="gaussian")
    x = tf.constant(digits[0][:32])
    with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(model._bounds(x, num_samples=2)["bound"])
    gradients = tape.gradient(loss, model.trainable_variables)
    encoder_weights = {id(v) for v in model.encoder.trainable_variables + model.posterior_head.trainable_variables}
    assert len(encoder_weights) > 0
    for variable, gradient in zip(model.trainable_variables, gradients):
        assert gradient is not None, variable.path
        gradient = gradient.numpy()
        assert np.all(np.isfinite(gradient)), variable.path
        assert np.any(gradient != 0), variable.path


def test_encoder_gradient_flows_through_the_reparameterized_sample(digits):
    """d loss / d mu of the reconstruction term is non-zero only if z = mu + sigma * eps carries it."""
    model = VAE(input_shape=(64,), latent_dim=4)
    x = tf.constant(digits[0][:16])
    with tf.GradientTape() as tape:
        q, z = model._sample_posterior(x, 1)
        reconstruction = tf.reduce_mean(model._log_likelihood(x, z))
    grads = tape.gradient(reconstruction, model.encoder.trainable_variables)
    assert all(g is not None and np.abs(g.numpy()).sum() > 0 for g in grads)


def test_shapes_of_encode_decode_sample_and_call():
    model = VAE(input_shape=(8, 8, 1), latent_dim=3)
    x = np.random.RandomState(0).rand(5, 8, 8, 1).astype(np.float32)
    q = model.encode(x)
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    p = model.decode(q.mean())
    assert p.batch_shape == (5,) and p.event_shape == (8, 8, 1)
    assert model.decode(q.mean()).log_prob(x).shape == (5,)
    assert model.prior.event_shape == (3,) and model.prior.batch_shape == ()
    samples = model.sample(7).numpy()
    assert samples.shape == (7, 8, 8, 1) and samples.min() >= 0 and samples.max() <= 1
    np.testing.assert_allclose(model(x).numpy(), model.reconstruct(x).numpy())
    np.testing.assert_allclose(model.sample(4, seed=3).numpy(), model.sample(4, seed=3).numpy())
    assert not np.allclose(model.sample(4).numpy(), model.sample(4).numpy())


@pytest.mark.parametrize("input_shape", [(28, 28, 1), (32, 32, 3)])
def test_convolutional_bodies_fit_image_shapes(input_shape):
    model = VAE(input_shape=input_shape, latent_dim=4, encoder="conv", decoder="conv", likelihood="gaussian")
    x = np.random.RandomState(0).rand(3, *input_shape).astype(np.float32)
    assert model.reconstruct(x).shape == (3, *input_shape)
    assert model.elbo(x).shape == (3,)
    model.fit(x, epochs=1, batch_size=3, verbose=0)


def test_fit_accepts_datasets_with_and_without_labels(digits):
    x = digits[0][:200]
    labels = np.arange(200) % 10
    model = VAE(input_shape=(64,), latent_dim=2)
    for data in (
        tf.data.Dataset.from_tensor_slices(x).batch(50),
        tf.data.Dataset.from_tensor_slices((x, labels)).batch(50),
    ):
        with warnings.catch_warnings():
            # Keras's "shuffle=True was passed, but will be ignored" must not reach the user.
            warnings.simplefilter("error", UserWarning)
            history = model.fit(data, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    history = model.fit(x, labels, epochs=1, batch_size=50, verbose=0)
    assert np.isfinite(history.history["elbo"][0])


def test_kl_warmup_ramps_beta_from_zero(digits):
    model = VAE(input_shape=(64,), latent_dim=2)
    history = model.fit(digits[0][:100], epochs=4, batch_size=50, verbose=0, callbacks=[tfvae.callbacks.KLWarmup(epochs=2)])
    assert history.history["beta"] == [0.0, 0.5, 1.0, 1.0]
    # With beta = 0 the loss is the negative reconstruction term alone.
    np.testing.assert_allclose(history.history["loss"][0], -history.history["reconstruction"][0], rtol=1e-5)


def test_iwae_objective_trains_on_the_importance_weighted_bound(digits):
    model = VAE(input_shape=(64,), latent_dim=2, objective="iwae", num_samples=5)
    history = model.fit(digits[0][:200], epochs=2, batch_size=50, verbose=0)
    # The K = 5 bound is at least the ELBO in expectation, so its loss sits below -ELBO.
    assert history.history["loss"][-1] < -history.history["elbo"][-1]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"posterior": "full", "prior": "mixture", "likelihood": "gaussian", "beta": 0.5},
        {"prior": tfvae.distributions.MixtureOfGaussians(latent_dim=3, num_components=4)},
    ],
)
def test_save_and_load_round_trip_in_safe_mode(options, digits, tmp_path):
    model = VAE(input_shape=(64,), latent_dim=3, **options)
    model.fit(digits[0][:100], epochs=1, batch_size=50, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    x = digits[1][:10]
    z = np.random.RandomState(0).randn(4, 3).astype(np.float32)
    np.testing.assert_array_equal(loaded.encode(x).mean().numpy(), model.encode(x).mean().numpy())
    np.testing.assert_array_equal(loaded.encode(x).stddev().numpy(), model.encode(x).stddev().numpy())
    np.testing.assert_array_equal(loaded.decode(z).mean().numpy(), model.decode(z).mean().numpy())
    np.testing.assert_array_equal(loaded.prior.log_prob(z).numpy(), model.prior.log_prob(z).numpy())
    assert float(loaded.beta) == float(model.beta)
    assert type(loaded.prior_head) is type(model.prior_head)


def test_a_loaded_model_keeps_its_optimizer_state_and_goes_on_training(digits, tmp_path, recwarn):
    model = VAE(input_shape=(64,), latent_dim=2)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    model.fit(digits[0][:200], epochs=2, batch_size=50, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert not [w for w in recwarn if "compile" in str(w.message)]
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 8
    assert float(loaded.optimizer.learning_rate) == pytest.approx(2e-3)
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    history = loaded.fit(digits[0][:200], epochs=1, batch_size=50, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and int(loaded.optimizer.iterations) == 12


def _train(strategy, x):
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = VAE(input_shape=(64,), latent_dim=3, posterior="full")
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(x, epochs=2, batch_size=40, shuffle=False, verbose=0)
    return history.history, model.get_weights()


def test_mirrored_strategy_matches_one_device(digits):
    x = digits[0][:160]
    single_history, single_weights = _train(tf.distribute.get_strategy(), x)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    mirrored_history, mirrored_weights = _train(mirrored, x)
    for name, values in single_history.items():
        np.testing.assert_allclose(mirrored_history[name], values, rtol=1e-4, err_msg=name)
    for a, b in zip(single_weights, mirrored_weights):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_kl_term_is_analytic_for_gaussian_pairs(digits):
    model = VAE(input_shape=(64,), latent_dim=3)
    x = tf.constant(digits[0][:6])
    terms = model._bounds(x, num_samples=1)
    expected = tfd.kl_divergence(model.encode(x), model.prior)
    np.testing.assert_allclose(terms["kl"].numpy(), expected.numpy(), rtol=1e-6)


def test_mixed_bfloat16_keeps_distributions_and_the_loss_in_float32(digits):
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = VAE(input_shape=(64,), latent_dim=3)
        history = model.fit(digits[0][:200], epochs=2, batch_size=50, verbose=0)
        q = model.encode(digits[1][:5])
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.encoder.hidden[0].compute_dtype == "bfloat16"
    assert q.dtype == tf.float32 and model.decode(q.mean()).dtype == tf.float32
    assert model.elbo(digits[1][:5]).dtype == tf.float32
    # bf16 layers, float32 densities: the loss is an ordinary ELBO of an 8x8 binary image.
    assert 10 < history.history["loss"][-1] < 45


class _UnfusedAdam(keras.optimizers.Adam):
    """Keras's own Adam update: a subclass is not taken down the fused-kernel path."""


def test_fused_adam_step_equals_keras_adam(digits):
    """train_step applies a plain Adam with TF's fused kernel: the same update as Keras's Adam."""
    results = []
    for optimizer in (keras.optimizers.Adam(3e-3, epsilon=1e-4), _UnfusedAdam(3e-3, epsilon=1e-4, name="unfused_adam")):
        keras.utils.set_random_seed(5)
        model = VAE(input_shape=(64,), latent_dim=3)
        model.compile(optimizer=optimizer)
        history = model.fit(digits[0][:400], epochs=2, batch_size=50, shuffle=False, verbose=0)
        results.append((history.history["loss"], model.get_weights(), int(optimizer.iterations)))
    (fused_loss, fused_weights, fused_steps), (keras_loss, keras_weights, keras_steps) = results
    variables = [keras.Variable(np.ones(3, np.float32))]
    gradients = [tf.ones(3)]
    for optimizer, fused in ((keras.optimizers.Adam(), True), (_UnfusedAdam(name="unfused_adam"), False)):
        optimizer.build(variables)  # as fit does before the first step
        assert tfvae.model._apply_adam_fused(optimizer, gradients, variables) is fused
    assert fused_steps == keras_steps == 16
    np.testing.assert_allclose(fused_loss, keras_loss, rtol=1e-5)
    for a, b in zip(fused_weights, keras_weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "examples, fit_kwargs, per_execution, steps_per_epoch",
    [
        (700, {}, 70, 140),  # 140 batches: its largest divisor between 50 and 100
        (30, {}, 6, 6),  # fewer batches than the default: all of them in one execution
        (700, {"steps_per_epoch": 7}, 7, 7),  # an explicit count: a divisor of it, no step past it
    ],
)
def test_default_steps_per_execution_fits_the_epoch(examples, fit_kwargs, per_execution, steps_per_epoch):
    x = (np.random.default_rng(0).uniform(size=(examples, 4)) < 0.5).astype(np.float32)
    model = VAE(input_shape=(4,), latent_dim=2, decoder=keras.layers.Dense(8), encoder=keras.layers.Dense(8))
    data = tf.data.Dataset.from_tensor_slices(x).batch(5)
    if fit_kwargs:
        data = data.repeat()
    model.fit(data, epochs=2, verbose=0, **fit_kwargs)
    assert int(model.steps_per_execution) == per_execution
    assert int(model.optimizer.iterations) == 2 * steps_per_epoch
