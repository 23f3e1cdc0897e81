"""tfvae.VAE: the bounds it computes, how it trains, and how it round-trips."""

import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_probability import distributions as tfd

import tfvae
from quadrature import exact_log_prob
from tfvae import VAE


@pytest.fixture(scope="module")
def trained_2d(digits):
    """A 2-D latent model trained briefly on binarized digits: small enough to integrate exactly."""
    keras.utils.set_random_seed(1)
    model = VAE(input_shape=(64,), latent_dim=2, encoder=tfvae.networks.MLP([64]), decoder=tfvae.networks.MLP([64]))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(digits[0], epochs=15, batch_size=50, verbose=0)
    return model


def test_log_prob_matches_quadrature_and_the_elbo_lies_below(trained_2d, digits):
    x = digits[1][:12]
    exact = exact_log_prob(trained_2d, x)
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
    # E[IWAE_K] rises with K; over all 297 test images one draw of each mean is precise enough to show it.
    x = digits[1]
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
        loss = -tf.reduce_mean(model.bound(x, num_samples=2)["bound"])
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
        q = model.posterior(x)
        z = tfvae.heads.reparameterize(model.posterior_head, q, model.noise(1, 16))
        reconstruction = tf.reduce_mean(model.log_likelihood(x, z))
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
    before = model.evaluate(digits[1], verbose=0, return_dict=True)
    history = model.fit(digits[0], epochs=3, batch_size=50, verbose=0)
    after = model.evaluate(digits[1], verbose=0, return_dict=True)
    # Untrained, the bound is near 64 ln 2 = 44 nats per image; three epochs take it well below.
    assert before["loss"] > 40 and after["loss"] < before["loss"] - 10
    assert history.history["loss"][-1] < history.history["loss"][0]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"posterior": "full", "prior": "mixture", "likelihood": "gaussian", "beta": 0.5},
        {"prior": tfvae.heads.MixtureOfGaussians(latent_dim=3, num_components=4)},
        {"posterior": tfvae.heads.DiagonalGaussian(latent_dim=3)},  # a head object: restored with its build
        {"posterior": tfvae.heads.FullCovarianceGaussian(latent_dim=3)},
    ],
)
def test_save_and_load_round_trip_in_safe_mode(options, digits, tmp_path, recwarn):
    model = VAE(input_shape=(64,), latent_dim=3, **options)
    model.fit(digits[0][:100], epochs=1, batch_size=50, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    # Every head builds its own layers: Keras has nothing to warn about ("has unbuilt state").
    assert not [w for w in recwarn if "unbuilt state" in str(w.message)]
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


def test_mirrored_strategy_matches_one_device(digits, mirrored):
    x = digits[0][:160]
    single_history, single_weights = _train(tf.distribute.get_strategy(), x)
    assert mirrored.num_replicas_in_sync == 2
    mirrored_history, mirrored_weights = _train(mirrored, x)
    for name, values in single_history.items():
        np.testing.assert_allclose(mirrored_history[name], values, rtol=1e-4, err_msg=name)
    for a, b in zip(single_weights, mirrored_weights):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_kl_term_is_analytic_for_gaussian_pairs(digits):
    model = VAE(input_shape=(64,), latent_dim=3)
    x = tf.constant(digits[0][:6])
    terms = model.bound(x, num_samples=1)
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


def test_fused_adam_step_equals_keras_adam(digits):
    """tfvae.training.Adam applies TF's fused kernel: the same update as Keras's Adam, step for step."""
    results = []
    for optimizer in (tfvae.training.Adam(3e-3, epsilon=1e-4), keras.optimizers.Adam(3e-3, epsilon=1e-4)):
        keras.utils.set_random_seed(5)
        model = VAE(input_shape=(64,), latent_dim=3)
        model.compile(optimizer=optimizer)
        history = model.fit(digits[0][:400], epochs=2, batch_size=50, shuffle=False, verbose=0)
        results.append((history.history["loss"], model.get_weights(), int(optimizer.iterations)))
    (fused_loss, fused_weights, fused_steps), (keras_loss, keras_weights, keras_steps) = results
    assert fused_steps == keras_steps == 16
    np.testing.assert_allclose(fused_loss, keras_loss, rtol=1e-5)
    for a, b in zip(fused_weights, keras_weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _apply_ops(optimizer, variables):
    """The op types of one traced apply_gradients step."""
    optimizer.build(variables)
    step = tf.function(lambda: optimizer.apply_gradients([(tf.ones(v.shape), v) for v in variables]))
    return {op.type for op in step.get_concrete_function().graph.get_operations()}


def test_compile_default_adam_is_fused_and_honors_constraints():
    model = VAE(input_shape=(4,), latent_dim=2)
    model.compile()
    assert type(model.optimizer) is tfvae.training.Adam
    assert "ResourceApplyAdam" in _apply_ops(tfvae.training.Adam(), [keras.Variable(np.ones(3, np.float32))])
    assert "ResourceApplyAdam" not in _apply_ops(keras.optimizers.Adam(), [keras.Variable(np.ones(3, np.float32))])
    # Keras applies a variable's constraint after the update; the fused update must not skip it.
    layer = keras.layers.Dense(3, kernel_constraint=keras.constraints.NonNeg(), kernel_initializer="ones")
    layer.build((None, 2))
    optimizer = tfvae.training.Adam(learning_rate=0.1)
    for _ in range(20):  # each step moves the kernel by about -0.1: it would reach -1
        optimizer.apply_gradients([(tf.ones((2, 3)), layer.kernel)])
    np.testing.assert_array_equal(layer.kernel.numpy(), 0.0)


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


def test_iwae_objective_is_the_log_mean_of_the_importance_weights(digits):
    """The registered "iwae" bound, by hand: logsumexp_k [log p(x|z_k) + beta (log p(z_k) - log q(z_k|x))] - log K."""
    model = VAE(input_shape=(64,), latent_dim=2, encoder=tfvae.networks.MLP([16]), decoder=tfvae.networks.MLP([16]))
    x = tf.constant(digits[1][:6])
    q = model.posterior(x)
    eps = tfvae.noise.standard_normal((5, 6, 2), tf.constant([3, 4], tf.int64))
    sample = tfvae.objectives.posterior_sample(model, x, q, eps)
    z = q.mean() + q.stddev() * eps
    logits = model.likelihood_head(model.decoder(tf.reshape(z, (-1, 2)))).numpy().reshape(5, 6, 64)
    log_likelihood = (x.numpy() * logits - np.logaddexp(0.0, logits)).sum(-1)
    log_prior = tfd.Normal(0.0, 1.0).log_prob(z).numpy().sum(-1)
    log_q = tfd.Normal(q.mean(), q.stddev()).log_prob(z).numpy().sum(-1)
    for beta in (1.0, 0.5):
        log_weights = log_likelihood + beta * (log_prior - log_q)
        expected = np.log(np.mean(np.exp(log_weights - log_weights.max(0)), axis=0)) + log_weights.max(0)
        actual = tfvae.objectives.OBJECTIVES["iwae"](sample, beta).numpy()
        np.testing.assert_allclose(actual, expected, rtol=1e-5)
    elbo = tfvae.objectives.OBJECTIVES["elbo"](sample, 1.0).numpy()
    np.testing.assert_allclose(elbo, log_likelihood.mean(0) - tfd.kl_divergence(q, model.prior).numpy(), rtol=1e-5)


def test_losses_that_layers_add_join_the_training_loss(digits):
    """Keras adds `model.losses` (add_loss, regularizers) to the loss; so does tfvae's train_step."""
    encoder = keras.layers.Dense(8, activation="tanh", kernel_regularizer=keras.regularizers.L2(10.0))
    model = VAE(input_shape=(64,), latent_dim=2, encoder=encoder, decoder=tfvae.networks.MLP([8]))
    model.compile()
    logs = model.evaluate(digits[1][:100], batch_size=50, verbose=0, return_dict=True)
    penalty = 10.0 * np.sum(np.square(encoder.kernel.numpy()))
    assert penalty > 1.0
    np.testing.assert_allclose(logs["loss"], -logs["elbo"] + penalty, rtol=1e-5)
    history = model.fit(digits[0][:200], epochs=3, batch_size=50, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert 10.0 * np.sum(np.square(encoder.kernel.numpy())) < penalty  # training shrinks the penalized weights


def test_val_loss_is_the_training_loss_on_validation_data(digits):
    model = VAE(input_shape=(64,), latent_dim=2, beta=0.5)
    h = model.fit(digits[0][:200], epochs=1, batch_size=50, validation_data=(digits[1][:100],), verbose=0).history
    np.testing.assert_allclose(h["loss"], [-(h["reconstruction"][0] - 0.5 * h["kl"][0])], rtol=1e-5)
    np.testing.assert_allclose(h["val_loss"], [-(h["val_reconstruction"][0] - 0.5 * h["val_kl"][0])], rtol=1e-5)
    np.testing.assert_allclose(h["val_elbo"], [h["val_reconstruction"][0] - h["val_kl"][0]], rtol=1e-5)


def test_a_failed_save_leaves_the_previous_file(monkeypatch, tmp_path):
    model = VAE(input_shape=(4,), latent_dim=2)
    path = tmp_path / "model.keras"
    model.save(path)
    saved = path.read_bytes()

    def broken_save(self, filepath, *args, **kwargs):  # as a save that dies part-way does
        with open(filepath, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "new.keras")
    assert path.read_bytes() == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


class _Steps(keras.callbacks.Callback):
    """Records the step numbers that batch-level callbacks are told."""

    def __init__(self):
        super().__init__()
        self.told = {"train": [], "test": [], "predict": []}

    def on_train_batch_end(self, batch, logs=None):
        self.told["train"].append(batch)

    def on_test_batch_end(self, batch, logs=None):
        self.told["test"].append(batch)

    def on_predict_batch_end(self, batch, logs=None):
        self.told["predict"].append(batch)


@pytest.mark.slow
def test_batch_callbacks_are_told_the_epochs_own_steps(digits):
    # 1,500 examples in batches of 12 are 125 steps, run as executions of 100 and 25: Keras told callbacks
    # of step 199. The validation data's 1,250 examples are 105 steps.
    x = np.concatenate([digits[0], digits[1][:0]])[:1500]
    model = VAE(input_shape=(64,), latent_dim=2)
    steps = _Steps()
    history = model.fit(x, epochs=2, batch_size=12, verbose=0, callbacks=[steps], validation_data=x[:1250])
    assert steps.told["train"] == [99, 124] * 2 and steps.told["test"] == [99, 104] * 2
    assert len(history.history["val_elbo"]) == 2
    steps = _Steps()
    model.evaluate(x, batch_size=12, verbose=0, callbacks=[steps])
    model.predict(x, batch_size=12, verbose=0, callbacks=[steps])
    assert steps.told == {"train": [], "test": [99, 124], "predict": [99, 124]}


def test_a_loaded_model_goes_on_with_the_noise_stream_draw_for_draw(digits, tmp_path):
    # The seed generator's state was not saved: a loaded (resumed) model drew its first batch's noise again.
    model = VAE(input_shape=(64,), latent_dim=2, seed=5)
    model.fit(digits[0][:300], epochs=1, batch_size=100, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.seed_generator.state.numpy(), model.seed_generator.state.numpy())
    assert model.seed_generator.state.numpy()[1] == 3  # three steps drew noise
    go_on = {"epochs": 1, "batch_size": 100, "verbose": 0, "shuffle": False}
    np.testing.assert_array_equal(loaded.fit(digits[0][:300], **go_on).history["elbo"],
                                  model.fit(digits[0][:300], **go_on).history["elbo"])


def test_the_progress_bar_never_counts_past_the_epoch(capsys):
    x = (np.random.default_rng(0).uniform(size=(500, 4)) < 0.5).astype(np.float32)
    model = VAE(input_shape=(4,), latent_dim=2, encoder=keras.layers.Dense(4), decoder=keras.layers.Dense(4))
    model.fit(x, epochs=1, batch_size=4, verbose=1)  # 125 batches, 100 per execution
    assert int(model.steps_per_execution) == 100
    out = capsys.readouterr().out
    assert "125/125" in out
    assert "200/125" not in out


def test_fit_on_arrays_takes_the_gather_pipeline_with_keras_meanings(digits, monkeypatch):
    """Arrays go through tfvae.data.make_dataset; batch_size, shuffle and validation_split keep Keras's meaning."""
    made = []
    original = tfvae.data.make_dataset

    def recording(x, batch_size, *args, **kwargs):
        made.append((len(x), batch_size, kwargs.get("shuffle", True)))
        return original(x, batch_size, *args, **kwargs)

    monkeypatch.setattr(tfvae.data, "make_dataset", recording)
    model = VAE(input_shape=(64,), latent_dim=2, encoder=tfvae.networks.MLP([16]), decoder=tfvae.networks.MLP([16]))
    x = digits[0][:300]
    history = model.fit(x, np.arange(300), epochs=2, batch_size=40, validation_split=0.2, verbose=0)
    # The last 20% (60 examples) validate, in order; 240 train in batches of 40, reshuffled.
    assert made == [(60, 40, False), (240, 40, True)]
    assert int(model.optimizer.iterations) == 2 * 6
    assert len(history.history["val_loss"]) == 2
    made.clear()
    model.fit(x, epochs=1, shuffle=False, validation_data=(digits[1],), validation_batch_size=97, verbose=0)
    assert made == [(297, 97, False), (300, 32, False)]  # Keras's default batch size
    weights = np.ones(300, np.float32)
    made.clear()
    model.fit(x, sample_weight=weights, epochs=1, batch_size=100, verbose=0)  # Keras's own path
    assert made == []
    with pytest.raises(ValueError, match="validation_split: 0.999 of 300 examples leaves one of the two splits empty"):
        model.fit(x, validation_split=0.999, verbose=0)
    # Outside (0, 1) Keras's cut at floor(N (1 - split)) would be another split: 1.5 trained on x[:-150].
    steps = int(model.optimizer.iterations)
    for split in (1.5, -0.5, float("nan"), True, "0.2"):
        for path in ({}, {"sample_weight": weights}):  # make_dataset's path and Keras's own
            with pytest.raises(ValueError, match=re.escape(f"validation_split: expected the fraction of x to hold "
                                                           f"out, in [0, 1); got {split!r}.")):
                model.fit(x, validation_split=split, verbose=0, **path)
    assert int(model.optimizer.iterations) == steps


def test_fit_on_arrays_reshuffles_every_epoch_reproducibly(digits):
    def losses(seed):
        keras.utils.set_random_seed(seed)
        model = VAE(input_shape=(64,), latent_dim=2, encoder=tfvae.networks.MLP([16]), decoder=tfvae.networks.MLP([16]))
        return model.fit(digits[0][:400], epochs=3, batch_size=50, verbose=0).history["loss"]

    np.testing.assert_array_equal(losses(3), losses(3))
    assert losses(3) != losses(4)
