"""Hierarchical VAEs, latent_dim=(d_1, ..., d_L): the math every stochastic layer must keep (log p(x) by
quadrature, AIS and IS agree; ELBO <= IWAE_k rising in k; the KL of the layers sums to the KL), the
heads' protocol for the layers, and everything a one-layer model does: infer, encode, sample, active
units, conditions, .keras files, SavedModel and LiteRT exports, the command line."""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_probability import distributions as tfd

import tfvae
from digits_models import assert_exports_with_parity, assert_round_trips_through_keras_files
from digits_models import train
from quadrature import exact_log_prob, importance_sampling_stderr
from test_cli import in_process
from tfvae.cli import main
from tfvae import heads, objectives


def _two_scalar_layers():
    """z_1 and z_2 of one dimension each: z is 2-D, so log p(x) has a quadrature."""
    return tfvae.VAE(input_shape=(64,), latent_dim=(1, 1), encoder=tfvae.networks.MLP([64]),
                     decoder=tfvae.networks.MLP([64]), seed=0)


@pytest.fixture(scope="module")
def scalar_layers():
    return train("hierarchy", _two_scalar_layers, "binary")


@pytest.fixture(scope="module")
def layered(digits):
    """Two layers, (6, 3), 20 epochs on the binarized digits."""
    keras.utils.set_random_seed(0)
    model = tfvae.VAE(input_shape=(64,), latent_dim=(6, 3), encoder=tfvae.networks.MLP([64]),
                      decoder=tfvae.networks.MLP([64]), seed=0)
    model.compile(keras.optimizers.Adam(3e-3))
    history = model.fit(digits[0], epochs=20, batch_size=100, verbose=0)
    return model, history.history


def _exact_log_prob(model, x):
    """Quadrature on a grid around each example's posterior: z_1's learned prior p(z_1|z_2) lets the
    posteriors of different examples lie far apart, and one grid holding them all would be 30x larger."""
    q = model.encode(x)
    mean, stddev = q.mean().numpy(), q.stddev().numpy()
    return np.concatenate([exact_log_prob(model, x[i : i + 1], limit=float(8 * stddev[i].max()), points=201,
                                          center=mean[i]) for i in range(len(x))])


def test_log_prob_of_two_layers_matches_quadrature_and_ais(scalar_layers):
    _, model, x_test, history = scalar_layers
    assert history["elbo"][-1] > history["elbo"][0] + 1.0
    x = x_test[:10]
    exact = _exact_log_prob(model, x)
    estimate = model.log_prob(x, num_samples=5000, seed=1).numpy()
    np.testing.assert_array_less(np.abs(estimate - exact), 4 * importance_sampling_stderr(model, x, 5000) + 0.01)
    assert np.mean(model.elbo(x, num_samples=200, seed=1)) < np.mean(exact)  # log p(x) - ELBO = KL(q || p(z|x)) >= 0
    ais = tfvae.evaluate.log_prob_estimate(model, x, num_samples=16, method="ais", ais_steps=300, seed=0)
    assert np.mean(np.abs(ais.log_prob - exact)) < 0.1
    # The refined proposal: a mixture of hierarchical posteriors, each refined on every layer.
    refined = tfvae.evaluate.log_prob_estimate(model, x, num_samples=2000, proposal="refined", seed=2)
    np.testing.assert_array_less(np.abs(refined.log_prob - exact), 4 * refined.stderr + 0.01)


def test_two_layers_round_trip_through_keras_files(scalar_layers, tmp_path):
    assert_round_trips_through_keras_files(scalar_layers, tmp_path)
    _, model, x_test, _ = scalar_layers
    model.save(tmp_path / "again.keras")
    loaded = keras.models.load_model(tmp_path / "again.keras")
    assert loaded.latent_dims == (1, 1) and loaded.get_config()["latent_dim"] == [1, 1]
    np.testing.assert_array_equal(loaded.log_prob(x_test[:20], 50, seed=3), model.log_prob(x_test[:20], 50, seed=3))


@pytest.mark.slow
def test_two_layers_export_with_parity(scalar_layers, tmp_path):
    assert_exports_with_parity(scalar_layers, tmp_path)


def test_elbo_is_below_iwae_which_rises_with_k(layered, digits):
    model, _ = layered
    x = digits[1][:200]
    elbo = np.mean(model.elbo(x, num_samples=100, seed=1))
    iwae = [np.mean(model.log_prob(x, num_samples=k, seed=1)) for k in (1, 10, 100, 1000)]
    assert abs(iwae[0] - elbo) < 0.3  # IWAE_1 is a one-sample ELBO
    assert elbo < iwae[1] < iwae[2] < iwae[3]


@pytest.mark.slow
def test_log_prob_with_5000_samples_has_converged(layered, digits):
    model, _ = layered
    x = digits[1][:100]
    runs = [np.mean(model.log_prob(x, num_samples=5000, seed=seed)) for seed in (1, 2)]
    assert abs(runs[0] - runs[1]) < 0.1


def test_the_layers_kl_sum_to_the_kl_and_the_top_layer_stays_active(layered, digits):
    model, history = layered
    assert {"kl_z1", "kl_z2"} <= history.keys()
    np.testing.assert_allclose(np.add(history["kl_z1"], history["kl_z2"]), history["kl"], rtol=1e-4)
    report = tfvae.evaluate.log_likelihood(model, digits[1][:100], num_samples=50, verbose=0)
    np.testing.assert_allclose(report["kl_z1"] + report["kl_z2"], report["kl"], rtol=1e-4)
    # The top layer has not collapsed onto its prior: it carries information about x.
    assert report["kl_z2"] > 0.1
    active = tfvae.evaluate.active_units(model, digits[1])
    assert len(active) == 2 and active[0] >= 1 and active[1] >= 1


def test_kl_by_layer_is_log_q_minus_log_p_of_each_layer(layered, digits):
    model, _ = layered
    x = tf.constant(digits[1][:5])
    q = model.posterior(x)
    sample = objectives.posterior_sample(model, x, q, model.noise(3, 5))
    z1, z2 = np.split(sample.z.numpy(), [6], axis=-1)
    q1, q2 = q.layers(sample.z)
    p1, p2 = model.prior.layers(sample.z)
    kl = objectives.layer_kl(sample)
    np.testing.assert_allclose(kl["kl_z1"], np.mean(q1.log_prob(z1) - p1.log_prob(z1), axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(kl["kl_z2"], np.mean(q2.log_prob(z2) - p2.log_prob(z2), axis=0), rtol=1e-4, atol=1e-5)
    # q(z_2|x) is the top head on the encoder's features; p(z_2) the standard normal
    assert isinstance(p2, tfd.Independent) and np.allclose(p2.mean(), 0.0)
    np.testing.assert_allclose(q.log_prob(sample.z), sample.log_q, rtol=1e-5, atol=1e-4)


def test_encode_gives_every_layer_and_infer_refines_them(layered, digits):
    model, _ = layered
    x = digits[1][:50]
    q = model.encode(x)
    assert q.event_shape == (9,) and q.batch_shape == (50,)
    q1, q2 = q.layers()
    np.testing.assert_allclose(q.mean(), np.concatenate([q1.mean(), q2.mean()], axis=-1), rtol=1e-6)
    np.testing.assert_allclose(q1.mean(), q.layers(np.concatenate([np.zeros((50, 6)), q2.mean()], -1))[0].mean(),
                               rtol=1e-5)
    refined = model.infer(x, steps=100, seed=0)
    r1, r2 = refined.layers()
    assert not np.allclose(r1.mean(), q1.mean()) and not np.allclose(r2.mean(), q2.mean())
    gain = tfvae.inference.elbo(model, x, refined, 200, seed=4) - tfvae.inference.elbo(model, x, q, 200, seed=4)
    assert np.mean(gain) > 0.1


def test_samples_come_from_the_prior_top_down(layered):
    model, _ = layered
    x = model.sample(1000, seed=1)
    assert x.shape == (1000, 64) and np.all((0 <= x) & (x <= 1))
    z = model.prior.sample(20000, seed=(1, 2)).numpy()
    assert z.shape == (20000, 9)
    np.testing.assert_allclose(z[:, 6:].mean(axis=0), 0.0, atol=0.05)  # z_2 ~ N(0, I)
    np.testing.assert_allclose(z[:, 6:].std(axis=0), 1.0, atol=0.05)
    # z_1 | z_2 is the conditional head at each z_2: its standardized draws are N(0, I)
    p1 = model.prior.layers(z)[0]
    standardized = (z[:, :6] - p1.mean().numpy()) / p1.stddev().numpy()
    np.testing.assert_allclose(standardized.mean(axis=0), 0.0, atol=0.05)
    np.testing.assert_allclose(standardized.std(axis=0), 1.0, atol=0.05)


def test_free_bits_floor_each_layers_kl(digits):
    model = tfvae.VAE(input_shape=(64,), latent_dim=(4, 2), kl_schedule=tfvae.schedules.FreeBits(nats=3.0), seed=0)
    x = tf.constant(digits[0][:100])
    sample = objectives.posterior_sample(model, x, model.posterior(x), model.noise(1, 100))
    layers = objectives.layer_kl(sample)
    expected = sum(max(3.0, float(np.mean(kl))) for kl in layers.values())
    np.testing.assert_allclose(model.kl_schedule.term(sample, 0)["kl_term"], expected, rtol=1e-5)


class ExpScaleGaussian(keras.layers.Layer):
    """A user's conditional head: N(loc, exp(log_scale)), following the posterior protocol."""

    def __init__(self, latent_dim, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = latent_dim
        self.dense = keras.layers.Dense(2 * latent_dim)

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim}

    def call(self, h):
        return self.dense(h)

    def distribution(self, params):
        loc, log_scale = tf.split(params, 2, axis=-1)
        return tfd.Independent(tfd.Normal(loc, tf.exp(tf.clip_by_value(log_scale, -5.0, 3.0))), 1)


@pytest.mark.slow
@pytest.mark.parametrize("prior", ["vamp", "mixture"])
def test_any_top_prior_full_covariance_layers_conditions_iwae_and_a_users_head(digits, prior):
    labels = np.eye(10)[np.arange(len(digits[0])) % 10].astype(np.float32)
    condition_shape = None if prior == "vamp" else (10,)  # a VampPrior encodes unconditioned pseudo-inputs
    conditional_prior = tfvae.heads.HierarchicalPrior((3, 2), [tfvae.networks.MLP([32])], top=prior,
                                                      layer=[ExpScaleGaussian(3)], event_shape=(64,))
    # The mixture's model also trains on the IWAE bound (K = 2), the VampPrior's on the ELBO.
    objective = {"objective": "iwae", "num_samples": 2} if prior == "mixture" else {}
    model = tfvae.VAE(input_shape=(64,), latent_dim=(3, 2), posterior="full", prior=conditional_prior,
                      condition_shape=condition_shape, seed=0, **objective)
    model.compile(keras.optimizers.Adam(3e-3))
    c = None if condition_shape is None else labels
    history = model.fit(digits[0], c, epochs=3, batch_size=100, verbose=0)
    assert history.history["elbo"][-1] > history.history["elbo"][0]
    x = digits[1][:10]
    c = None if condition_shape is None else labels[:10]
    exact = np.mean(model.log_prob(x, 500, condition=c, seed=1))
    assert np.mean(model.elbo(x, 200, condition=c, seed=1)) < exact
    assert isinstance(model.posterior_head.layer_heads[0], heads.FullCovarianceGaussian)
    assert model.sample(4, seed=1, condition=None if c is None else c[0]).shape == (4, 64)


@pytest.mark.slow
def test_a_conv_hierarchy_trains_on_images(digits):
    images = digits[0].reshape(-1, 8, 8, 1)
    model = tfvae.VAE(input_shape=(8, 8, 1), latent_dim=(4, 2), encoder="conv", decoder="conv", seed=0)
    assert all(isinstance(b, tfvae.networks.GatedMLP) for b in model.posterior_head.bodies + model.prior_head.bodies)
    model.compile(keras.optimizers.Adam(1e-3))
    history = model.fit(images, epochs=2, batch_size=100, verbose=0)
    assert history.history["elbo"][-1] > history.history["elbo"][0]
    assert model.log_prob(images[:4], 10).shape == (4,)


@pytest.mark.parametrize("latent_dim", [0, (), (3, 0), (2.5, 2), (-1,), (4, True), "40,40"])
def test_bad_latent_dims_are_refused_naming_the_argument(latent_dim):
    with pytest.raises(ValueError, match="latent_dim: expected an integer >= 1"):
        tfvae.VAE(input_shape=(64,), latent_dim=latent_dim)


def test_per_layer_lists_of_the_wrong_length_and_conv_on_vectors_are_refused():
    with pytest.raises(ValueError, match=r"posterior: expected 2 heads, one per layer \(latent_dim=\(3, 2\)\); got 1"):
        tfvae.VAE(input_shape=(64,), latent_dim=(3, 2), posterior=heads.HierarchicalPosterior(
            (3, 2), [tfvae.networks.MLP([8])], layer=[heads.DiagonalGaussian(3)]))
    with pytest.raises(ValueError, match=r"prior: expected 1 Keras layers, one body for each layer below the top"):
        heads.HierarchicalPrior((3, 2), [tfvae.networks.MLP([8]), tfvae.networks.MLP([8])])
    with pytest.raises(ValueError, match=r"prior: expected 2 heads, one for each layer below the top"):
        heads.HierarchicalPrior((3, 2, 2), [tfvae.networks.MLP([8])] * 2, layer=[heads.DiagonalGaussian(3)])
    with pytest.raises(ValueError, match="encoder: 'conv' expects images"):
        tfvae.VAE(input_shape=(64,), latent_dim=(4, 2), encoder="conv", decoder="conv")


@pytest.mark.slow
def test_the_command_line_trains_evaluates_and_resumes_a_hierarchy(tmp_path, capsys):
    train = ["train", "--dataset", "digits", "--latent-dim", "4,2", "--epochs", "2", "--batch-size", "100",
             "--diagnostics-every", "2", "--diagnostics-samples", "10", "--out", "runs/h"]
    result = in_process(train, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "runs/h/config.json").read_text())["latent_dim"] == [4, 2]
    history = (tmp_path / "runs/h/history.csv").read_text().splitlines()[0].split(",")
    assert {"kl_z1", "kl_z2", "val_kl_z1", "val_active_units_z2"} <= set(history)
    evaluated = in_process(["evaluate", "runs/h", "--num-samples", "5", "--json"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["latent_dim"] == [4, 2] and len(report["active_units"]) == 2
    assert abs(report["kl_z1"] + report["kl_z2"] - report["kl"]) < 1e-3
    table = in_process(["evaluate", "runs/h", "--num-samples", "5"], tmp_path).stdout
    assert f"{report['active_units'][0]} + {report['active_units'][1]} of 4 + 2" in table
    assert re.search(r"layer z2 +-?\d+\.\d\d nats +KL of z2", table), table
    resumed = in_process(["train", "--resume", "--out", "runs/h", "--epochs", "3"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming runs/h" in resumed.stdout
    with pytest.raises(SystemExit) as refused:
        main(["train", "--dataset", "digits", "--latent-dim", "4,0", "--out", str(tmp_path / "runs/bad")])
    assert refused.value.code == 2 and "argument --latent-dim: expected D or D1,D2,..." in capsys.readouterr().err


def _burda_chain(dims=(1, 1)):
    """Burda et al.'s two-layer structure: q(z_1|x) q(z_2|z_1), p(z_2) p(z_1|z_2), p(x|z_1)."""
    posterior = heads.HierarchicalPosterior(dims, [tfvae.networks.MLP([32])], direction="bottom_up")
    prior = heads.HierarchicalPrior(dims, [tfvae.networks.MLP([32])])
    return tfvae.VAE(input_shape=(64,), latent_dim=dims, encoder=tfvae.networks.MLP([64]),
                     decoder=tfvae.networks.Bottom(dims, tfvae.networks.MLP([64])), posterior=posterior,
                     prior=prior, seed=0)


def _trained_to_quadrature(name, build):
    """(model, x, exact log p(x)) of `build()` trained on the binary digits: training raised its ELBO, and
    log_prob(x, 5000) of ten test images x is the quadrature's within 4 of its standard errors."""
    _, model, x_test, history = train(name, build, "binary")
    assert history["elbo"][-1] > history["elbo"][0] + 1.0
    x = x_test[:10]
    exact = _exact_log_prob(model, x)
    estimate = model.log_prob(x, num_samples=5000, seed=1).numpy()
    np.testing.assert_array_less(np.abs(estimate - exact), 4 * importance_sampling_stderr(model, x, 5000) + 0.01)
    return model, x, exact


def test_burdas_bottom_up_chain_matches_quadrature_and_decodes_from_z1_alone(tmp_path):
    model, x, _ = _trained_to_quadrature("chain", _burda_chain)
    # p(x|z_1, z_2) does not depend on z_2
    z = np.array([[0.5, -3.0], [0.5, 3.0]], np.float32)
    means = model.decode(z).mean().numpy()
    np.testing.assert_array_equal(means[0], means[1])
    # q draws z_1 first: its first layer is q(z_1|x), a head on the encoder's features
    q = model.encode(x)
    assert q.upward and q.first.event_shape == (1,)
    with pytest.raises(ValueError, match="top: a chain drawn from the bottom up"):
        q.top
    with pytest.raises(ValueError, match="top: a chain drawn from the bottom up"):
        tfvae.VAE(input_shape=(64,), latent_dim=(1, 1), prior="vamp",
                  posterior=heads.HierarchicalPosterior((1, 1), [tfvae.networks.MLP([8])], direction="bottom_up"))
    model.save(tmp_path / "chain.keras")
    loaded = keras.models.load_model(tmp_path / "chain.keras")
    assert loaded.posterior_head.direction == "bottom_up"
    np.testing.assert_array_equal(loaded.log_prob(x, 50, seed=3), model.log_prob(x, 50, seed=3))


def _ladder(dims=(1, 1)):
    """The ladder VAE's structure: q(z_1|x, z_2) the prior's p(z_1|z_2) times a bottom-up estimate."""
    posterior = heads.HierarchicalPosterior(dims, [tfvae.networks.MLP([32])], direction="ladder")
    prior = heads.HierarchicalPrior(dims, [tfvae.networks.MLP([32])])
    return tfvae.VAE(input_shape=(64,), latent_dim=dims, encoder=tfvae.networks.MLP([64]),
                     decoder=tfvae.networks.MLP([64]), posterior=posterior, prior=prior, seed=0)


def test_the_ladder_matches_quadrature_and_multiplies_the_priors_layer_by_its_estimate(tmp_path):
    model, x, exact = _trained_to_quadrature("ladder", _ladder)
    assert np.all(model.elbo(x, 1000, seed=2).numpy() < exact)

    # q(z_1|x, z_2): precisions add, and the mean is the precision-weighted mean of the two Gaussians.
    z = model.encode(x).sample(seed=4)
    q1 = model.encode(x).layers(z)[0]
    p1 = model.prior.layers(z)[0]
    head = model.posterior_head.layer_heads[0]
    params = model.posterior_parameters(x)
    m = head.distribution(params[..., model.posterior_head.first_size :])
    precision = m.stddev() ** -2 + p1.stddev() ** -2
    np.testing.assert_allclose(q1.stddev(), precision**-0.5, rtol=1e-5)
    np.testing.assert_allclose(q1.mean(), (m.mean() * m.stddev() ** -2 + p1.mean() * p1.stddev() ** -2) / precision,
                               rtol=1e-4, atol=1e-5)
    # The parameters infer moves are every layer's estimate: the top's (2) and z_1's (2).
    assert params.shape == (10, 4)
    # q and p share p(z_1|z_2)'s networks: each weight once in the model, and once in its file.
    assert len({id(w) for w in model.weights}) == len(model.weights)
    model.save(tmp_path / "ladder.keras")
    loaded = keras.models.load_model(tmp_path / "ladder.keras")
    assert loaded.posterior_head.direction == "ladder" and len(loaded.weights) == len(model.weights)
    np.testing.assert_array_equal(loaded.log_prob(x, 50, seed=3), model.log_prob(x, 50, seed=3))


@pytest.mark.slow
def test_a_ladder_under_a_vampprior_exports_with_parity(tmp_path):
    def ladder():
        posterior = heads.HierarchicalPosterior((2, 1), [tfvae.networks.MLP([32])], direction="ladder")
        prior = heads.HierarchicalPrior((2, 1), [tfvae.networks.MLP([32])], top="vamp", event_shape=(64,))
        return tfvae.VAE(input_shape=(64,), latent_dim=(2, 1), encoder=tfvae.networks.MLP([64]),
                         decoder=tfvae.networks.MLP([64]), posterior=posterior, prior=prior, seed=0)

    assert_exports_with_parity(train("ladder-vamp", ladder, "binary"), tmp_path)


def test_a_ladder_needs_diagonal_gaussian_layers_and_a_hierarchical_prior():
    body = [tfvae.networks.MLP([8])]
    with pytest.raises(ValueError, match="posterior: a ladder posterior multiplies diagonal Gaussian layers; got a "
                                         "FullCovarianceGaussian layer"):
        heads.HierarchicalPosterior((2, 2), body, layer="full", direction="ladder")
    ladder = heads.HierarchicalPosterior((2, 2), body, direction="ladder")
    with pytest.raises(ValueError, match="prior: a ladder posterior needs a HierarchicalPrior of the same layers "
                                         r"\(latent_dim=\(2, 2\)\); got HierarchicalPrior"):
        tfvae.VAE(input_shape=(64,), latent_dim=(2, 2), posterior=ladder,
                  prior=heads.HierarchicalPrior((3, 1), [tfvae.networks.MLP([8])]))
    with pytest.raises(ValueError, match="prior: a ladder posterior multiplies diagonal Gaussian layers"):
        tfvae.VAE(input_shape=(64,), latent_dim=(2, 2), posterior=ladder,
                  prior=heads.HierarchicalPrior((2, 2), [tfvae.networks.MLP([8])], layer="full"))
    with pytest.raises(ValueError, match="direction: expected one of top_down, bottom_up, ladder; got 'up'"):
        heads.HierarchicalPosterior((2, 2), body, direction="up")
