"""tfvae's own likelihoods for real data, the VampPrior and the gated MLP body: each trains on digits
with a 2-D latent, its log p(x) agrees with quadrature, and it saves, loads and exports; plus the math
of each head on its own (normalizers, bin probabilities, lgamma in builtin ops)."""

import json
import math

import keras
import numpy as np
import pytest
import scipy.special
import tensorflow as tf

import tfvae
from digits_models import (
    assert_exports_with_parity,
    assert_round_trips_through_keras_files,
    assert_trained_and_log_prob_is_exact,
    train,
    two_d_model,
)
from test_cli import tfvae as tfvae_command
from tfvae import heads
from tfvae.cli import main

# tfvae's heads by name, each on the digits as the data it models.
_model = two_d_model


def _vamp_prior():
    # 50 pseudo-inputs, not 500: the quadrature evaluates p(z) on a 501 x 501 grid, once per component.
    return heads.VampPrior(latent_dim=2, event_shape=(64,), num_components=50)


CASES = {
    "continuous_bernoulli": (lambda: _model("continuous_bernoulli"), "grey"),
    "discretized_logistic": (lambda: _model("discretized_logistic"), "levels"),
    "poisson": (lambda: _model("poisson"), "counts"),
    "negative_binomial": (lambda: _model("negative_binomial"), "counts"),
    "vamp": (lambda: _model(prior=_vamp_prior(), body=lambda: tfvae.networks.GatedMLP([64])), "binary"),
}
DISCRETE = ("discretized_logistic", "poisson", "negative_binomial", "vamp")


@pytest.fixture(scope="module", params=sorted(CASES))
def trained(request):
    return train(request.param, *CASES[request.param])


def test_trains_and_log_prob_matches_quadrature(trained):
    exact, estimate, stderr = assert_trained_and_log_prob_is_exact(trained)
    if trained[0] in DISCRETE:  # a probability: log p(x) <= 0, exactly and within the estimator's error
        np.testing.assert_array_less(exact, 1e-3)
        np.testing.assert_array_less(estimate, 4 * stderr)


def test_round_trips_through_keras_files(trained, tmp_path):
    assert_round_trips_through_keras_files(trained, tmp_path)


def test_exports_to_saved_model_and_tflite_with_parity(trained, tmp_path):
    assert_exports_with_parity(trained, tmp_path)


def test_continuous_bernoulli_normalizer_is_exact_near_one_half():
    # log C(lambda) = log p(x = 0) - log(1 - lambda), against C = 2 artanh(1 - 2 lambda) / (1 - 2 lambda) in float64.
    logits = np.array([-1.0, -0.02, -1e-3, -1e-5, 1e-7, 1e-5, 1e-3, 0.02, 1.0, 20.0])
    head = heads.ContinuousBernoulli(event_shape=(1,))
    p = head.distribution(tf.constant(logits[:, None], tf.float32))
    log_p0 = p.log_prob(np.zeros((len(logits), 1), np.float32))
    log_normalizer = log_p0.numpy() + np.log1p(np.exp(logits))  # - log(1 - sigmoid(l)) = softplus(l)
    lam = scipy.special.expit(logits)
    exact = np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))
    np.testing.assert_allclose(log_normalizer, exact, rtol=5e-7, atol=3e-7)
    np.testing.assert_allclose(head.distribution(tf.zeros((1, 1))).log_prob(np.full((1, 1), 0.3, np.float32)), [0.0],
                               atol=1e-7)  # lambda = 1/2 is the uniform density
    with tf.GradientTape() as tape:
        at_half = tf.zeros((1, 1))
        tape.watch(at_half)
        log_prob = head.distribution(at_half).log_prob(np.full((1, 1), 0.8, np.float32))
    np.testing.assert_allclose(tape.gradient(log_prob, at_half), [[0.8 - 0.5]], atol=1e-6)  # x - E[x]


@pytest.mark.parametrize("loc, log_scale", [(0.3, -3.0), (0.5, -7.0), (-2.0, 0.0), (1.2, -5.0), (0.5, 3.0)])
def test_discretized_logistic_bins_sum_to_one(loc, log_scale):
    head = heads.DiscretizedLogistic(event_shape=(1,))
    levels = np.arange(256, dtype=np.float32)[:, None] / 255
    p = head.distribution(tf.constant(np.broadcast_to([[loc, log_scale]], (256, 1, 2)), tf.float32))
    log_probs = p.log_prob(levels).numpy().astype(np.float64)
    assert np.all(log_probs <= 0)
    np.testing.assert_allclose(np.exp(log_probs).sum(), 1.0, atol=1e-6)
    np.testing.assert_allclose(p.mean().numpy()[0], np.sum(np.exp(log_probs) * levels[:, 0]), atol=1e-6)
    np.testing.assert_allclose(heads.point_estimate(head, p)[0], [np.clip(loc, 0, 1)])


def test_discretized_logistic_is_stable_far_in_the_tails():
    # A bin 300 scales from the location: sigmoid(a) - sigmoid(b) underflows to 0 in float32, log-sigmoids do not.
    head = heads.DiscretizedLogistic(event_shape=(1,))
    p = head.distribution(tf.constant([[[0.0, -5.0]]]))
    log_prob = float(p.log_prob(np.full((1, 1), 128 / 255, np.float32)).numpy()[0])
    scale, edges = np.exp(-5.0), (np.array([127.5, 128.5]) / 255)
    exact = -edges[0] / scale + np.log1p(-np.exp(-(edges[1] - edges[0]) / scale))  # log(e^-b - e^-a), tails
    assert math.isfinite(log_prob)
    np.testing.assert_allclose(log_prob, exact, rtol=1e-5)


def test_log_gamma_in_builtin_ops_matches_scipy():
    x = np.concatenate([np.logspace(-4, 6, 3000), np.linspace(0.5, 12.0, 1000)]).astype(np.float32)
    ours = heads.log_gamma(tf.constant(x)).numpy()
    np.testing.assert_allclose(ours, scipy.special.gammaln(x.astype(np.float64)), rtol=1e-6, atol=4e-6)


def test_count_likelihoods_match_tfp_and_refuse_non_counts():
    from tensorflow_probability import distributions as tfd

    counts = np.array([[0.0, 1.0, 7.0, 250.0]], np.float32)
    params = np.array([[[0.3, -1.2], [2.0, 0.5], [0.01, 1.0], [5.0, 3.0]]], np.float32)
    negative_binomial = heads.NegativeBinomial(event_shape=(4,)).distribution(tf.constant(params))
    total_count = np.log1p(np.exp(params[..., 0])) + 1e-3
    reference = tfd.NegativeBinomial(total_count.astype(np.float64), logits=params[..., 1].astype(np.float64))
    # float32 holds lgamma(250 + r) ~ 1150 to ~1e-4: that is the tolerance, relative to the sum.
    expected = reference.log_prob(counts).numpy().sum(-1)
    np.testing.assert_allclose(negative_binomial.log_prob(counts), expected, rtol=1e-5)
    poisson = heads.Poisson(event_shape=(4,)).distribution(tf.constant(params[..., 1]))
    reference = tfd.Poisson(log_rate=params[..., 1].astype(np.float64))
    np.testing.assert_allclose(poisson.log_prob(counts), reference.log_prob(counts).numpy().sum(-1), rtol=2e-6)
    for likelihood in ("poisson", "negative_binomial"):
        model = _model(likelihood)
        x = np.full((2, 64), 3.0, np.float32)
        assert np.all(np.isfinite(model.elbo(x).numpy()))
        with pytest.raises(ValueError, match=r"x: the \w+ likelihood expects whole numbers >= 0 \(counts\); "
                                             r"got 2 values outside it, in \[-1, 0.5\]"):
            model.elbo(x + np.eye(2, 64, dtype=np.float32) * np.array([[-2.5], [-4.0]]))


def test_discretized_logistic_refuses_values_between_levels():
    model = _model("discretized_logistic")
    with pytest.raises(ValueError, match=r"x: the DiscretizedLogistic likelihood expects values k/255 for whole k "
                                         r"from 0 to 255 \(8-bit images scaled by 1/255\); "
                                         r"got 64 values outside it, in \[0.5, 0.5\]"):
        model.elbo(np.full((1, 64), 0.5, np.float32))  # 127.5 / 255
    assert math.isfinite(float(model.elbo(np.full((1, 64), 128 / 255, np.float32))[0]))


def test_vamp_prior_by_name_has_500_pseudo_inputs_in_the_unit_interval_and_round_trips(tmp_path):
    model = _model(prior="vamp")
    prior = model.prior
    assert prior.mixture_distribution.logits.shape == (500,) and prior.event_shape == (2,)
    pseudo_inputs = model.prior_head.pseudo_inputs.numpy()
    assert pseudo_inputs.shape == (500, 64) and pseudo_inputs.min() >= 0 and pseudo_inputs.max() <= 1
    model.save(tmp_path / "vamp.keras")
    loaded = keras.models.load_model(tmp_path / "vamp.keras")
    assert loaded.get_config()["prior"] == "vamp"
    np.testing.assert_array_equal(loaded.prior_head.pseudo_inputs, pseudo_inputs)
    with pytest.raises(ValueError, match=r"num_components: expected an integer >= 1; got 0"):
        heads.VampPrior(latent_dim=2, event_shape=(64,), num_components=0)


def test_gated_dense_is_a_gated_linear_unit():
    layer = tfvae.networks.GatedDense(3)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    output = layer(x).numpy()  # builds the layer
    kernel, bias = (w.numpy() for w in layer.dense.weights)
    h, gate = np.split(x @ kernel + bias, 2, axis=-1)
    np.testing.assert_allclose(output, h / (1 + np.exp(-gate)), rtol=1e-5, atol=1e-6)
    assert isinstance(tfvae.networks.get("gated_mlp", "encoder", (64,)), tfvae.networks.GatedMLP)
    assert tfvae.networks.get("gated_mlp", "decoder", (64,)).units == [300, 300]


# The command line.


def test_cli_names_every_registered_head():
    from tfvae import cli

    assert cli.LIKELIHOODS == tuple(heads.LIKELIHOODS)
    assert cli.PRIORS == tuple(heads.PRIORS)


@pytest.mark.slow  # the default suite must stay under 10 minutes on 2 cores
def test_cli_trains_a_vamp_prior_gated_mlp_continuous_bernoulli_and_resumes_only_with_its_prior(tmp_path, capsys):
    run = tmp_path / "run"
    result = tfvae_command("train", "--dataset", "digits", "--likelihood", "continuous_bernoulli", "--prior", "vamp",
                           "--architecture", "gated_mlp", "--latent-dim", "2", "--epochs", "1", "--out", run,
                           cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = json.loads((run / "config.json").read_text())
    assert (config["likelihood"], config["prior"], config["architecture"], config["binarization"]) == (
        "continuous_bernoulli", "vamp", "gated_mlp", "none")
    model = keras.models.load_model(run / "model.keras")
    assert isinstance(model.prior_head, heads.VampPrior) and isinstance(model.encoder, tfvae.networks.GatedMLP)
    assert main(["train", "--resume", "--out", str(run), "--prior", "normal", "--epochs", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"tfvae: error: --prior normal contradicts the run's prior = 'vamp' in {run}/config.json; resume without "
        "--prior, or start a new run with another --out.")


def test_cli_refuses_count_likelihoods_on_images_naming_the_dataset(tmp_path, capsys):
    assert main(["train", "--dataset", "digits", "--likelihood", "poisson", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.startswith("tfvae: error: --dataset digits (train split): the Poisson "
                                              "likelihood expects whole numbers >= 0 (counts); got ")
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.slow
def test_cli_resumes_runs_written_before_prior_was_a_flag(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--latent-dim", "2", "--epochs", "1", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    del config["prior"]
    (run / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2"]) == 0
    assert json.loads((run / "config.json").read_text())["prior"] == "normal"
