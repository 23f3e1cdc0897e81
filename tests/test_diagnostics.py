"""Tests for tfvae.callbacks.Diagnostics: each number against what the math predicts from the model's
own posterior (closed-form KL, the covariance of the posterior means, quadrature), the epochs it runs
on, History, TensorBoard, and `tfvae train`'s diagnostics in history.csv."""

import csv
import glob
import json
import math
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_probability import distributions as tfd

import tfvae
from conftest import DIGITS_RUN_LATENT_DIM
from test_cli import error_lines
from test_cli import tfvae as tfvae_command
from tfvae import callbacks, evaluate, networks, resources
from tfvae.cli import main

LATENT_DIM = 4
SAMPLES = 20


def small_vae(**kwargs):
    return tfvae.VAE(input_shape=(64,), latent_dim=LATENT_DIM, encoder=networks.MLP([32]),
                     decoder=networks.MLP([32]), seed=0, **kwargs)


class KeysSeen(keras.callbacks.Callback):
    """Records, after the callbacks before it, the epochs whose logs hold `key`."""

    def __init__(self, key):
        super().__init__()
        self.key, self.epochs = key, []

    def on_epoch_end(self, epoch, logs=None):
        if self.key in logs:
            self.epochs.append(epoch)


@pytest.fixture(scope="module")
def fitted(digits, tmp_path_factory):
    """A model fitted for 4 epochs with diagnostics every 2, to History and TensorBoard."""
    keras.utils.set_random_seed(0)
    model = small_vae()
    log_dir = tmp_path_factory.mktemp("logs")
    seen = KeysSeen("val_log_likelihood")
    diagnostics = callbacks.Diagnostics(digits[1], every=2, num_samples=SAMPLES, log_dir=str(log_dir))
    history = model.fit(digits[0], epochs=4, batch_size=100, validation_data=digits[1], verbose=0,
                        callbacks=[diagnostics, seen])
    return model, history.history, seen.epochs, log_dir


def closed_form_kl(q):
    """E_x 0.5 (mu^2 + sigma^2 - 1 - 2 log sigma) per dimension, in float64 from q's marginals."""
    mu, sigma = (np.asarray(v, np.float64) for v in (q.mean(), q.stddev()))
    return np.mean(0.5 * (mu**2 + sigma**2 - 1 - 2 * np.log(sigma)), axis=0)


def test_kl_per_dimension_is_the_closed_form_and_sums_to_the_models_kl(fitted, digits):
    model, history, _, _ = fitted
    logged = np.array([history[f"val_kl_{d}"][-1] for d in range(LATENT_DIM)])

    np.testing.assert_allclose(logged, closed_form_kl(model.encode(digits[1])), rtol=1e-5)
    np.testing.assert_allclose(logged.sum(), history["val_kl"][-1], rtol=1e-5)  # Keras's metric of the ELBO's KL


def test_kl_per_dimension_checks_what_it_is_given(fitted, digits):
    model = fitted[0]
    # Lists are a batch like any input; the closed form is the same as for the array.
    np.testing.assert_allclose(callbacks.kl_per_dimension(model, digits[1][:5].tolist()),
                               closed_form_kl(model.encode(digits[1][:5])), rtol=1e-5)
    bad = [
        ({"x": np.full((2, 64), np.nan, np.float32)}, r"x: expected finite values; got 128 NaN or inf entries"),
        ({"x": digits[1][:2, :63]}, r"x: expected a batch of shape \(batch, 64\); got shape \(2, 63\)"),
        ({"x": digits[1][:0]}, "x: expected at least one example; got an empty batch"),
        ({"num_samples": 0}, "num_samples: expected an integer >= 1; got 0"),
        ({"batch_size": 0}, "batch_size: expected an integer >= 1; got 0"),
        ({"condition": np.zeros((2, 3))}, "condition: this model is unconditional"),
    ]
    for change, match in bad:
        with pytest.raises(ValueError, match=match):
            callbacks.kl_per_dimension(model, **{"x": digits[1][:2], **change})


def test_active_units_count_the_units_whose_posterior_mean_varies_more_than_the_threshold(fitted, digits):
    model, history, _, _ = fitted
    variances = np.var(np.asarray(model.encode(digits[1]).mean(), np.float64), axis=0)
    between = np.sort(variances)[:3]
    threshold = float(between[1] + between[2]) / 2  # two units below it, two above

    diagnostics = callbacks.Diagnostics(digits[1], num_samples=1, threshold=threshold)
    diagnostics.set_model(model)

    assert diagnostics.diagnose()["val_active_units"] == 2
    assert history["val_active_units"][-1] == np.sum(variances > 0.01)


def test_log_likelihood_is_evaluates_estimate_from_the_same_noise(fitted, digits):
    model, history, _, _ = fitted
    # The callback puts the model's seed generator back: it now stands where the last diagnosis began.
    expected = evaluate.log_likelihood(model, digits[1], SAMPLES, verbose=0)

    assert history["val_log_likelihood"][-1] == expected["log_likelihood"]
    assert history["val_unreliable_fraction"][-1] == expected["unreliable_fraction"]
    assert history["val_log_likelihood"][-1] > history["val_elbo"][-1]  # IWAE_20 over the 1-sample ELBO


def test_training_draws_the_same_noise_with_diagnostics_as_without(digits):
    weights = []
    for extra in ([], [callbacks.Diagnostics(digits[1], num_samples=5)]):
        keras.utils.set_random_seed(0)
        model = small_vae()
        model.fit(digits[0], epochs=2, batch_size=100, verbose=0, callbacks=extra)
        weights.append(model.get_weights())

    for with_diagnostics, without in zip(*weights):
        np.testing.assert_array_equal(with_diagnostics, without)


def test_the_progress_bar_leaves_out_the_per_dimension_kls_that_history_keeps(digits, capsys):
    model = small_vae()
    history = model.fit(digits[0][:200], epochs=1, batch_size=100, validation_data=digits[1][:100], verbose=2,
                        callbacks=[callbacks.Diagnostics(digits[1][:100], num_samples=5)])

    epoch_line = capsys.readouterr().out.strip().splitlines()[-1]
    for shown in ("loss", "val_kl", "val_log_likelihood", "val_active_units"):
        assert f" {shown}: " in epoch_line, shown
    assert "val_kl_" not in epoch_line
    assert [key for key in history.history if key.startswith("val_kl_")] == [f"val_kl_{d}" for d in range(LATENT_DIM)]


def test_every_2_logs_on_epochs_2_and_4_to_history_and_tensorboard(fitted):
    _, history, seen, log_dir = fitted
    scalars, histograms = {}, set()
    for path in glob.glob(os.path.join(log_dir, "diagnostics", "events.out.tfevents*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                if array.ndim == 0:
                    scalars.setdefault(value.tag, {})[event.step] = float(array)
                else:
                    histograms.add((value.tag, event.step))

    assert seen == [1, 3]  # 0-based: the 2nd and 4th epochs
    assert len(history["val_elbo"]) == 4
    for key in ("val_log_likelihood", "val_unreliable_fraction", "val_active_units",
                *(f"val_kl_{d}" for d in range(LATENT_DIM))):
        assert len(history[key]) == 2, key
    assert scalars["log_likelihood"] == pytest.approx(dict(zip([1, 3], history["val_log_likelihood"])), rel=1e-6)
    assert scalars["unreliable_fraction"] == pytest.approx(dict(zip([1, 3], history["val_unreliable_fraction"])))
    assert scalars["active_units"] == dict(zip([1, 3], map(float, history["val_active_units"])))
    for d in range(LATENT_DIM):
        assert scalars[f"kl/{d}"] == pytest.approx(dict(zip([1, 3], history[f"val_kl_{d}"])), rel=1e-6)
    assert histograms == {("kl", 1), ("kl", 3)}


def test_full_covariance_kl_per_dimension_is_of_the_marginals_and_at_most_the_kl(digits):
    model = small_vae(posterior="full")
    diagnostics = callbacks.Diagnostics(digits[1], num_samples=1)
    diagnostics.set_model(model)

    values = diagnostics.diagnose()
    logged = np.array([values[f"val_kl_{d}"] for d in range(LATENT_DIM)])

    q = model.encode(digits[1])
    np.testing.assert_allclose(logged, closed_form_kl(q), rtol=1e-5)  # q.stddev(): sqrt of diag(L L^T)
    # KL(q || N(0, I)) = sum_d KL(q_d || N(0, 1)) + q's total correlation, which is >= 0.
    assert logged.sum() <= evaluate.log_likelihood(model, digits[1], 1, verbose=0)["kl"]


def test_mixture_prior_kl_per_dimension_matches_quadrature(digits):
    keras.utils.set_random_seed(1)
    model = small_vae(prior="mixture")
    x = digits[1][:50]
    diagnostics = callbacks.Diagnostics(x, num_samples=2000)
    diagnostics.set_model(model)

    values = diagnostics.diagnose()
    logged = np.array([values[f"val_kl_{d}"] for d in range(LATENT_DIM)])

    q = model.encode(x)
    mu, sigma = (np.asarray(v, np.float64)[..., None] for v in (q.mean(), q.stddev()))  # [N, D, 1]
    z = mu + sigma * np.linspace(-10, 10, 4001)  # [N, D, grid]
    log_q = -0.5 * ((z - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * math.log(2 * math.pi)
    mixture = model.prior
    weights = np.asarray(tf.nn.softmax(mixture.mixture_distribution.logits_parameter()), np.float64)
    # Each component's marginal in dimension d, as [D, 1, C] against z [N, D, grid, 1].
    loc, scale = (np.asarray(v, np.float64).T[:, None] for v in (mixture.components_distribution.mean(),
                                                                 mixture.components_distribution.stddev()))
    components = np.exp(-0.5 * ((z[..., None] - loc) / scale) ** 2) / (scale * math.sqrt(2 * math.pi))
    log_p = np.log(np.sum(weights * components, axis=-1))
    expected = np.mean(np.trapezoid(np.exp(log_q) * (log_q - log_p), z, axis=-1), axis=0)

    assert np.all(expected > 0.05)  # a KL the test can tell from 0
    # Monte Carlo with 50 x 2000 draws per dimension: its standard error here is ~0.003 nats.
    np.testing.assert_allclose(logged, expected, atol=0.02)


class LaplacePrior(keras.layers.Layer):
    """p(z) = prod_d Laplace(z_d; 0, 1): its marginals are not Gaussian."""

    def distribution(self):
        return tfd.Independent(tfd.Laplace(tf.zeros([LATENT_DIM]), 1.0), reinterpreted_batch_ndims=1)


def test_a_prior_without_gaussian_marginals_logs_no_kl_per_dimension(digits):
    model = small_vae(prior=LaplacePrior())
    diagnostics = callbacks.Diagnostics(digits[1], num_samples=1)
    diagnostics.set_model(model)

    assert diagnostics.keys() == ["val_log_likelihood", "val_unreliable_fraction", "val_active_units"]
    assert sorted(diagnostics.diagnose()) == ["val_active_units", "val_log_likelihood", "val_unreliable_fraction"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every": 0}, "every: expected an integer >= 1; got 0"),
        ({"num_samples": 2.5}, "num_samples: expected an integer >= 1; got 2.5"),
        ({"threshold": -1.0}, "threshold: expected a finite number >= 0; got -1.0"),
        ({"threshold": float("nan")}, "threshold: expected a finite number >= 0"),
        ({"batch_size": 0}, "batch_size: expected an integer >= 1; got 0"),
        ({"x": None}, "x: expected held-out examples"),
    ],
)
def test_bad_arguments_are_refused_by_name(digits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        callbacks.Diagnostics(**{"x": digits[1], **kwargs})


@pytest.mark.parametrize(
    "x, num_samples, error, match",
    [
        (np.zeros((5, 63)), 1, ValueError, r"x: expected a batch of shape \(batch, 64\); got shape \(5, 63\)"),
        (np.full((5, 64), np.nan), 1, ValueError, "x: "),
        (np.zeros((0, 64)), 1, ValueError, "x: expected at least one example"),
        (np.zeros((5, 64)), 2**30, resources.ResourceError, "num_samples=1073741824"),
    ],
)
def test_bad_x_or_too_many_samples_fail_before_training(digits, x, num_samples, error, match):
    model = small_vae()
    before = model.get_weights()

    with pytest.raises(error, match=match):
        model.fit(digits[0][:100], epochs=1, verbose=0, callbacks=[callbacks.Diagnostics(x, num_samples=num_samples)])

    for now, then in zip(model.get_weights(), before):
        np.testing.assert_array_equal(now, then)


def test_tfvae_train_writes_the_diagnostics_into_history_csv(digits_run, tmp_path, capsys):
    run, train = digits_run  # 2 epochs, diagnosed every 2 with K = 10, latent 3
    with open(run / "history.csv", newline="") as f:
        first, second = csv.DictReader(f)
    keys = ("val_log_likelihood", "val_unreliable_fraction", "val_active_units",
            *(f"val_kl_{d}" for d in range(DIGITS_RUN_LATENT_DIM)))
    assert [first[key] for key in keys] == ["NA"] * len(keys)
    assert 0.0 <= float(second["val_unreliable_fraction"]) <= 1.0
    assert float(second["val_log_likelihood"]) > float(second["val_elbo"])
    assert 0 <= int(second["val_active_units"]) <= DIGITS_RUN_LATENT_DIM
    kl = sum(float(second[f"val_kl_{d}"]) for d in range(DIGITS_RUN_LATENT_DIM))
    assert kl == pytest.approx(float(second["val_kl"]), rel=1e-5)
    assert f"Epoch 2: test log-likelihood {float(second['val_log_likelihood']):.2f} nats per image" in train.stdout
    # Keras's TensorBoard callback, after Diagnostics, writes them as validation scalars.
    steps = {(value.tag, event.step)
             for path in glob.glob(str(run / "logs" / "validation" / "events.out.tfevents*"))
             for event in tf.compat.v1.train.summary_iterator(path) for value in event.summary.value}
    assert {("epoch_log_likelihood", 1), ("epoch_active_units", 1), ("epoch_kl_2", 1)} <= steps
    assert ("epoch_log_likelihood", 0) not in steps

    bad = tfvae_command("train", "--dataset", "digits", "--diagnostics-every", -1, "--out", "bad", cwd=tmp_path)
    assert bad.returncode == 2
    assert error_lines(bad.stderr) == [
        "tfvae train: error: argument --diagnostics-every: expected an integer >= 0; got '-1' (see tfvae train --help)"
    ]
    assert not (tmp_path / "bad").exists()

    # Refused before anything is written: the K samples of one test image exceed one step of work.
    huge = ["train", "--dataset", "digits", "--diagnostics-samples", str(2**31), "--out", str(tmp_path / "huge")]
    assert main(huge) == 2
    error = capsys.readouterr().err
    assert error.startswith("tfvae: error: --diagnostics-samples 2147483648 (per test image): one step")
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "huge").exists()

    # A run from before diagnostics, without their config keys or columns, resumes without them.
    old = tmp_path / "old"
    shutil.copytree(run, old)
    config = json.loads((old / "config.json").read_text())
    del config["diagnostics_every"], config["diagnostics_samples"]
    (old / "config.json").write_text(json.dumps(config))
    with open(old / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [key for key in rows[0] if not key.startswith(("val_log_likelihood", "val_unreliable_fraction",
                                                              "val_active_units", "val_kl_"))]
    with open(old / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    assert main(["train", "--resume", "--out", str(old), "--epochs", "3"]) == 0
    with open(old / "history.csv", newline="") as f:
        header, *rows = csv.reader(f)
    assert header == columns and [len(row) for row in rows] == [len(columns)] * 3
