"""A conditional VAE, tfvae.VAE(condition_shape=...): q(z|x, c), p(x|z, c), p(z), trained by fit(x, y)."""

import contextlib
import csv
import io
import json
import os
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfvae
from test_cli import check_error
from test_cli import tfvae as run_tfvae
from tfvae import VAE
from tfvae.cli import main

CLASSES = 10


@pytest.fixture(scope="module")
def labelled_digits():
    """Binarized 8x8 digits (as the `digits` fixture) with one-hot labels: (x_train, c_train, x_test, c_test, labels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0 > 0.5).astype(np.float32)
    c = np.eye(CLASSES, dtype=np.float32)[digits.target]
    return x[:1500], c[:1500], x[1500:], c[1500:], digits.target


@pytest.fixture(scope="module")
def conditional(labelled_digits):
    """A small conditional VAE trained on the digits and their one-hot classes."""
    x, c, *_ = labelled_digits
    keras.utils.set_random_seed(2)
    model = VAE(
        input_shape=(64,),
        latent_dim=4,
        encoder=tfvae.networks.MLP([128]),
        decoder=tfvae.networks.MLP([128]),
        condition_shape=(CLASSES,),
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(x, c, epochs=25, batch_size=50, verbose=0)
    return model


@pytest.fixture(scope="module")
def classifier(labelled_digits):
    """A logistic regression trained on the real binarized training digits (~87% on the test digits)."""
    from sklearn.linear_model import LogisticRegression

    x, _, x_test, _, labels = labelled_digits
    model = LogisticRegression(max_iter=2000).fit(x, labels[:1500])
    assert model.score(x_test, labels[1500:]) > 0.8
    return model


def test_samples_drawn_for_class_c_are_classified_as_c(conditional, classifier):
    # The mean images, binarized at 0.5 as the classifier's training digits were; 50 draws per class.
    # Samples that ignored the condition would be classified as c about 10% of the time.
    accuracy = []
    for label in range(CLASSES):
        x = conditional.sample(50, seed=label, condition=np.eye(CLASSES)[label]).numpy()
        assert x.shape == (50, 64)
        accuracy.append(np.mean(classifier.predict((x > 0.5).astype(np.float32)) == label))
    assert np.mean(accuracy) >= 0.8, np.round(accuracy, 2)
    assert min(accuracy) >= 0.5, np.round(accuracy, 2)


def test_the_condition_changes_the_decoded_class(conditional, classifier):
    # One z decoded under every class gives every class: the decoder reads c, not only z.
    z = np.zeros((CLASSES, 4), np.float32)
    x = tfvae.heads.point_estimate(conditional.likelihood_head, conditional.decode(z, condition=np.eye(CLASSES)))
    predicted = classifier.predict((x.numpy() > 0.5).astype(np.float32))
    assert np.mean(predicted == np.arange(CLASSES)) >= 0.8


def test_estimators_take_the_condition_per_example(conditional, labelled_digits):
    _, _, x, c, _ = labelled_digits
    x, c = x[:20], c[:20]
    q = conditional.encode(x, condition=c)
    assert tuple(q.batch_shape) == (20,) and tuple(q.event_shape) == (4,)
    assert conditional.decode(q.mean(), condition=c).log_prob(x).shape == (20,)
    assert conditional.reconstruct(x, condition=c).shape == (20, 64)
    assert conditional.elbo(x, num_samples=5, condition=c).shape == (20,)
    assert conditional.log_prob(x, num_samples=50, condition=c).shape == (20,)
    # One condition per draw, as well as one for all.
    assert conditional.sample(20, seed=0, condition=c).shape == (20, 64)
    np.testing.assert_allclose(
        conditional.sample(3, seed=5, condition=c[0]).numpy(),
        conditional.sample(3, seed=5, condition=np.repeat(c[:1], 3, axis=0)).numpy(),
        atol=1e-6,
    )


def test_log_prob_under_the_right_condition_beats_a_wrong_one(conditional, labelled_digits):
    _, _, x, c, _ = labelled_digits
    wrong = np.roll(c, 1, axis=1)  # every digit labelled as the next class
    right_log_p = conditional.log_prob(x, num_samples=100, condition=c).numpy()
    wrong_log_p = conditional.log_prob(x, num_samples=100, condition=wrong).numpy()
    assert right_log_p.mean() > wrong_log_p.mean() + 5
    assert np.mean(right_log_p > wrong_log_p) > 0.8


def test_importance_sampled_log_p_x_given_c_lies_above_the_elbo(conditional, labelled_digits):
    _, _, x, c, _ = labelled_digits
    log_p = conditional.log_prob(x, num_samples=500, condition=c).numpy()
    elbo = conditional.elbo(x, num_samples=100, condition=c).numpy()
    assert np.all(np.isfinite(log_p)) and np.all(np.isfinite(elbo))
    assert 0 < np.mean(log_p - elbo) < 5


@pytest.mark.parametrize(
    "condition, match",
    [
        (None, r"condition: this model is conditional \(condition_shape=\(10,\)\)"),
        (np.zeros((5, 3)), r"condition: expected a batch of shape \(batch, 10\); got shape \(5, 3\)"),
        (np.zeros((4, 10)), r"condition: expected one condition per example \(5 rows\); got 4"),
        (np.full((5, 10), np.nan), r"condition: expected finite values; got 50 NaN"),
        (np.array([["a"] * 10] * 5), r"condition: expected numeric data"),
    ],
)
def test_a_conditional_model_refuses_a_missing_or_bad_condition(conditional, labelled_digits, condition, match):
    x = labelled_digits[2][:5]
    for call in (
        lambda: conditional.encode(x, condition=condition),
        lambda: conditional.elbo(x, condition=condition),
        lambda: conditional.log_prob(x, num_samples=10, condition=condition),
        lambda: conditional.reconstruct(x, condition=condition),
    ):
        with pytest.raises((ValueError, TypeError), match=match):
            call()


def test_a_conditional_model_refuses_bad_conditions_to_sample_and_fit(conditional, labelled_digits):
    x, c, *_ = labelled_digits
    with pytest.raises(ValueError, match=r"condition: this model is conditional"):
        conditional.sample(3)
    with pytest.raises(ValueError, match=r"condition: expected one condition of shape \(10,\) or one per draw \(3 rows\); got 2"):
        conditional.sample(3, condition=c[:2])
    with pytest.raises(ValueError, match=r"condition: this conditional model .* pass them as y"):
        conditional.fit(x[:50], epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"condition \(y\): expected one condition per example \(50 rows\); got 40"):
        conditional.fit(x[:50], c[:40], epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"condition: a conditional model needs a dataset of \(x, condition\) pairs"):
        conditional.fit(tf.data.Dataset.from_tensor_slices(x[:50]).batch(10), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"condition \(x\): expected a batch of shape \(batch, 10\); got shape \(None, 3\)"):
        conditional.fit(tf.data.Dataset.from_tensor_slices((x[:50], c[:50, :3])).batch(10), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"condition \(validation_data\[1\]\): expected a batch of shape"):
        conditional.fit(x[:50], c[:50], validation_data=(x[:10], c[:10, :3]), epochs=1, verbose=0)


def test_nan_conditions_in_a_dataset_fail_fit_with_a_value_error(labelled_digits):
    x, c, *_ = labelled_digits
    model = VAE(input_shape=(64,), latent_dim=2, condition_shape=(CLASSES,))
    c = c[:50].copy()
    c[7, 3] = np.nan
    with pytest.raises(ValueError, match=r"x's conditions: expected finite values"):
        model.fit(tf.data.Dataset.from_tensor_slices((x[:50], c)).batch(10), epochs=1, verbose=0)


def test_image_grids_draw_a_conditional_model_under_the_conditions_given(labelled_digits, tmp_path):
    from PIL import Image

    x, c, x_test, c_test, _ = labelled_digits
    model = VAE(input_shape=(64,), latent_dim=2, condition_shape=(CLASSES,))
    weights = [w.copy() for w in model.get_weights()]
    missing = tfvae.callbacks.ImageGrids(tmp_path, num_samples=20)
    with pytest.raises(ValueError, match=r"sample_condition: this model is conditional"):
        model.fit(x[:100], c[:100], epochs=1, verbose=0, callbacks=[missing])
    wrong = tfvae.callbacks.ImageGrids(tmp_path, x=x_test[:4], condition=c_test[:3], sample_condition=c[0])
    with pytest.raises(ValueError, match=r"condition: expected one condition per example \(4 rows\); got 3"):
        model.fit(x[:100], c[:100], epochs=1, verbose=0, callbacks=[wrong])
    assert os.listdir(tmp_path) == [] and all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))

    two_per_class = np.repeat(np.eye(CLASSES, dtype=np.float32), 2, axis=0)
    grids = tfvae.callbacks.ImageGrids(
        tmp_path, x=x_test[:4], condition=c_test[:4], num_samples=20, ncols=10, sample_condition=two_per_class
    )
    model.fit(x[:100], c[:100], epochs=1, verbose=0, callbacks=[grids])
    samples = model.sample(20, seed=0, condition=two_per_class).numpy()
    reconstructions = model.reconstruct(x_test[:4], c_test[:4]).numpy()
    tfvae.plots.image_grid(samples, tmp_path / "expected_samples.png", ncols=10)
    expected = tfvae.plots.interleave(x_test[:4], reconstructions, 10)
    tfvae.plots.image_grid(expected, tmp_path / "expected_reconstructions.png", ncols=10)
    for name in ("samples", "reconstructions"):
        with Image.open(tmp_path / f"{name}.png") as drawn, Image.open(tmp_path / f"expected_{name}.png") as expected:
            assert np.array_equal(np.asarray(drawn), np.asarray(expected))


def test_an_unconditional_model_refuses_a_condition(labelled_digits):
    x, c, *_ = labelled_digits
    model = VAE(input_shape=(64,), latent_dim=2)
    for call in (
        lambda: model.encode(x[:5], condition=c[:5]),
        lambda: model.decode(np.zeros((5, 2)), condition=c[:5]),
        lambda: model.elbo(x[:5], condition=c[:5]),
        lambda: model.log_prob(x[:5], num_samples=10, condition=c[:5]),
        lambda: model.sample(5, condition=c[0]),
    ):
        with pytest.raises(ValueError, match=r"condition: this model is unconditional \(condition_shape=None\)"):
            call()
    # Its fit ignores labels as before.
    model.fit(x[:100], c[:100], epochs=1, batch_size=50, verbose=0)


def test_condition_shape_is_checked():
    for bad in ((), (0,), (10, -1), "10", 2.5):
        with pytest.raises(ValueError, match=r"condition_shape: expected"):
            VAE(input_shape=(64,), latent_dim=2, condition_shape=bad)
    with pytest.raises(ValueError, match=r"prior: the VampPrior head encodes inputs without a condition"):
        VAE(input_shape=(64,), latent_dim=2, prior="vamp", condition_shape=(3,))


def test_fit_on_a_dataset_of_pairs_and_evaluate_with_conditions(labelled_digits):
    x, c, x_test, c_test, _ = labelled_digits
    model = VAE(input_shape=(64,), latent_dim=4, condition_shape=(CLASSES,))
    before = model.elbo(x_test, num_samples=5, condition=c_test).numpy().mean()
    dataset = tfvae.data.make_dataset(x, 50, labels=c, seed=0)
    history = model.fit(dataset, epochs=3, validation_data=(x_test, c_test), verbose=0)
    assert set(history.history) >= {"loss", "elbo", "val_loss", "val_elbo"}
    assert model.elbo(x_test, num_samples=5, condition=c_test).numpy().mean() > before + 10
    metrics = model.evaluate(x_test, c_test, verbose=0, return_dict=True)
    assert np.isfinite(metrics["elbo"])


def test_a_conditional_image_model_with_conv_bodies_trains(labelled_digits):
    x, c, *_ = labelled_digits
    images = x[:100].reshape(-1, 8, 8, 1)
    model = VAE(input_shape=(8, 8, 1), latent_dim=2, encoder="conv", decoder="conv", condition_shape=(CLASSES,))
    model.fit(images, c[:100], epochs=1, batch_size=50, verbose=0)
    assert model.sample(4, seed=0, condition=c[:4]).shape == (4, 8, 8, 1)
    assert np.all(np.isfinite(model.log_prob(images[:4], num_samples=10, condition=c[:4]).numpy()))


def test_condition_shape_is_in_the_config_and_survives_a_keras_round_trip(conditional, labelled_digits, tmp_path):
    _, _, x, c, _ = labelled_digits
    assert conditional.get_config()["condition_shape"] == [CLASSES]
    assert "condition_shape" not in VAE(input_shape=(64,), latent_dim=2).get_config()
    path = tmp_path / "cvae.keras"
    conditional.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert loaded.condition_shape == (CLASSES,)
    np.testing.assert_allclose(
        loaded.encode(x[:10], condition=c[:10]).mean().numpy(),
        conditional.encode(x[:10], condition=c[:10]).mean().numpy(),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        loaded.sample(5, seed=3, condition=c[0]).numpy(), conditional.sample(5, seed=3, condition=c[0]).numpy(), atol=1e-6
    )


def test_diagnostics_score_the_held_out_x_under_their_conditions(conditional, labelled_digits):
    _, _, x_test, c_test, _ = labelled_digits
    diagnostics = tfvae.callbacks.Diagnostics(x_test[:100], condition=c_test[:100], num_samples=10)
    diagnostics.set_model(conditional)
    diagnostics.on_train_begin()
    state = conditional.seed_generator.state.numpy()
    values = diagnostics.diagnose()
    conditional.seed_generator.state.assign(state)
    expected = tfvae.evaluate.log_likelihood(conditional, x_test[:100], 10, verbose=0, condition=c_test[:100])
    assert values["val_log_likelihood"] == expected["log_likelihood"]
    q = conditional.encode(x_test[:100], condition=c_test[:100])
    mu, sigma = q.mean().numpy().astype(np.float64), q.stddev().numpy().astype(np.float64)
    closed_form = np.mean(0.5 * (mu**2 + sigma**2 - 1) - np.log(sigma), axis=0)
    np.testing.assert_allclose([values[f"val_kl_{d}"] for d in range(4)], closed_form, rtol=1e-5, atol=1e-6)
    diagnostics.condition = None
    with pytest.raises(ValueError, match="^condition"):
        diagnostics.on_train_begin()


def test_evaluate_log_likelihood_takes_conditions_as_an_array_or_in_a_dataset(conditional, labelled_digits):
    _, _, x, c, _ = labelled_digits
    x, c = x[:60], c[:60]
    right = tfvae.evaluate.log_likelihood(conditional, x, num_samples=200, batch_size=25, verbose=0, condition=c)
    wrong = tfvae.evaluate.log_likelihood(
        conditional, x, num_samples=200, batch_size=25, verbose=0, condition=np.roll(c, 1, axis=1)
    )
    pairs = tfvae.evaluate.log_likelihood(
        conditional, tf.data.Dataset.from_tensor_slices((x, c)), num_samples=200, batch_size=25, verbose=0
    )
    assert right["num_examples"] == pairs["num_examples"] == 60
    assert right["log_likelihood"] > wrong["log_likelihood"] + 5
    assert right["log_likelihood"] >= right["elbo"]
    np.testing.assert_allclose(pairs["log_likelihood"], right["log_likelihood"], atol=3 * right["log_likelihood_stderr"])
    assert tfvae.evaluate.active_units(conditional, x, condition=c) >= 1
    with pytest.raises(ValueError, match=r"condition: this model is conditional"):
        tfvae.evaluate.log_likelihood(conditional, x, num_samples=10, verbose=0)
    with pytest.raises(ValueError, match=r"condition: a conditional model needs a dataset of \(x, condition\) pairs"):
        tfvae.evaluate.log_likelihood(conditional, tf.data.Dataset.from_tensor_slices(x), num_samples=10, verbose=0)
    with pytest.raises(ValueError, match=r"condition: a dataset carries its own conditions"):
        tfvae.evaluate.log_likelihood(
            conditional, tf.data.Dataset.from_tensor_slices((x, c)), num_samples=10, verbose=0, condition=c
        )


def test_infer_refines_the_conditional_posterior(conditional, labelled_digits):
    _, _, x, c, _ = labelled_digits
    x, c = x[:40], c[:40]
    q = conditional.infer(x, steps=50, seed=0, condition=c)
    refined = tfvae.inference.elbo(conditional, x, q, num_samples=200, seed=1, condition=c).numpy()
    amortized = tfvae.inference.elbo(conditional, x, conditional.encode(x, condition=c), num_samples=200, seed=1, condition=c)
    assert refined.mean() > amortized.numpy().mean()
    gap = tfvae.evaluate.amortization_gap(conditional, x, steps=20, elbo_samples=20, seed=0, condition=c)
    assert gap["amortization_gap"] > 0
    # The refined proposal refines q(z|x, c) from starts decoded under each x's own condition: its estimate of
    # log p(x|c) is the encoder proposal's, within their standard errors.
    encoder, mixture = (tfvae.evaluate.log_prob_estimate(conditional, x[:10], 1000, proposal=p, seed=3, condition=c[:10])
                        for p in ("encoder", "refined"))
    spread = np.sqrt(np.square(encoder.stderr) + np.square(mixture.stderr))
    np.testing.assert_array_less(np.abs(mixture.log_prob - encoder.log_prob), 5 * spread + 0.02)
    with pytest.raises(ValueError, match=r"condition: this model is conditional"):
        conditional.infer(x, steps=1)


@pytest.fixture(scope="module")
def exported(conditional, labelled_digits, tmp_path_factory):
    _, _, x, c, _ = labelled_digits
    directory = str(tmp_path_factory.mktemp("export") / "cvae")
    manifest = tfvae.export.save(conditional, directory, sample_inputs=x, sample_conditions=c, log_prob_samples=50)
    return directory, manifest


def _runtimes(directory):
    from ai_edge_litert.interpreter import Interpreter

    loaded = tf.saved_model.load(os.path.join(directory, "saved_model")).signatures
    interpreter = Interpreter(model_path=os.path.join(directory, "model.tflite"))

    def saved_model(name, **inputs):
        return {k: v.numpy() for k, v in loaded[name](**{k: tf.constant(v) for k, v in inputs.items()}).items()}

    def tflite(name, **inputs):
        return interpreter.get_signature_runner(name)(**inputs)

    return {"saved_model": saved_model, "tflite": tflite}


@pytest.mark.slow
def test_litert_estimates_draw_fresh_noise_after_an_empty_first_call(exported, labelled_digits):
    # LiteRT's BROADCAST_TO (the conditions over K samples of z) answered the first call after an empty first
    # one with stale rows: log_prob over 200 copies of 4 digits came out 0.8 nats above the SavedModel's.
    from ai_edge_litert.interpreter import Interpreter

    directory, manifest = exported
    _, _, x, c, _ = labelled_digits
    many_x, many_c = np.tile(x[:4], (50, 1)), np.tile(c[:4], (50, 1))
    for name in ("elbo", "log_prob"):
        runner = Interpreter(model_path=os.path.join(directory, "model.tflite")).get_signature_runner(name)
        assert runner(x=x[:0], condition=c[:0])[name].shape == (0,)
        draws = [runner(x=many_x, condition=many_c)[name] for _ in range(3)]
        assert not np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[1], draws[2]), name
        # 200 estimates of 4 digits: their mean is the SavedModel's within a few standard errors.
        saved = tf.saved_model.load(os.path.join(directory, "saved_model")).signatures[name]
        reference = saved(x=tf.constant(many_x), condition=tf.constant(many_c))[name].numpy()
        difference = draws[0] - reference  # row by row: the same digit under independent noise
        assert abs(np.mean(difference)) < 5 * np.std(difference) / np.sqrt(len(difference)) + 1e-3, name


def test_export_signatures_take_the_condition_and_match_keras(exported, conditional, labelled_digits, classifier):
    directory, manifest = exported
    _, _, x, c, _ = labelled_digits
    x, c = x[:16], c[:16]
    assert manifest["condition_shape"] == [CLASSES]
    for name, signature in manifest["signatures"].items():
        assert signature["inputs"]["condition"] == {"dtype": "float32", "shape": [-1, CLASSES]}, name
    # Parity of every signature, condition included, was checked by the export itself; here by hand too.
    q = conditional.encode(x, condition=c)
    z = q.mean().numpy()
    for runtime, run in _runtimes(directory).items():
        tolerance = 1e-4
        encoded = run("encode", x=x, condition=c)
        np.testing.assert_allclose(encoded["z_mean"], z, atol=tolerance, rtol=tolerance, err_msg=runtime)
        np.testing.assert_allclose(
            run("decode", z=z, condition=c)["x_mean"], conditional.decode(z, condition=c).mean().numpy(), atol=tolerance
        )
        np.testing.assert_allclose(
            run("reconstruct", x=x, condition=c)["x_mean"], conditional.reconstruct(x, condition=c).numpy(), atol=tolerance
        )
        # A wrong condition changes the answer: the graph reads it.
        assert np.abs(run("decode", z=z, condition=np.roll(c, 1, axis=1))["x_mean"] - run("decode", z=z, condition=c)["x_mean"]).max() > 0.1
        log_p = run("log_prob", x=x, condition=c)["log_prob"]
        assert log_p.shape == (16,) and np.all(np.isfinite(log_p))
        assert abs(log_p.mean() - conditional.log_prob(x, num_samples=50, condition=c).numpy().mean()) < 1.0
        assert run("elbo", x=x, condition=c)["elbo"].shape == (16,)
        # Class-conditional draws of the exported sampler are of their class.
        sevens = np.repeat(np.eye(CLASSES, dtype=np.float32)[7:8], 30, axis=0)
        for name, extra in (("sample", {}), ("sample_seeded", {"seed": np.int32(3)})):
            drawn = run(name, num_samples=np.int32(30), condition=sevens, **extra)["x_mean"]
            assert drawn.shape == (30, 64)
            assert np.mean(classifier.predict((drawn > 0.5).astype(np.float32)) == 7) >= 0.7, (runtime, name)


def test_exported_conditions_are_checked(exported, labelled_digits):
    directory, _ = exported
    _, _, x, c, _ = labelled_digits
    x, c = x[:4], c[:4]
    runtimes = _runtimes(directory)
    bad = {
        "rows": (c[:3], r"condition: expected finite values, one row per example"),
        "nan": (np.where(c > 0, np.nan, c).astype(np.float32), r"condition: expected finite values"),
        "width": (c[:, :3], r"condition: expected shape \(batch, 10\); got shape"),
    }
    for condition, match in bad.values():
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            runtimes["saved_model"]("encode", x=x, condition=condition)
        with pytest.raises(RuntimeError):
            runtimes["tflite"]("encode", x=x, condition=condition)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"condition: expected finite values, one row per example"):
        runtimes["saved_model"]("sample", num_samples=np.int32(5), condition=c)
    with pytest.raises(RuntimeError):
        runtimes["tflite"]("sample", num_samples=np.int32(5), condition=c)
    # The interpreter answers right inputs afterwards.
    assert runtimes["tflite"]("encode", x=x, condition=c)["z_mean"].shape == (4, 4)


def test_export_of_a_conditional_model_needs_the_sample_inputs_conditions(conditional, labelled_digits, tmp_path):
    _, _, x, c, _ = labelled_digits
    with pytest.raises(ValueError, match=r"sample_conditions: this model is conditional"):
        tfvae.export.save(conditional, str(tmp_path / "a"), sample_inputs=x)
    with pytest.raises(ValueError, match=r"sample_conditions: expected one condition per example \(297 rows\); got 5"):
        tfvae.export.save(conditional, str(tmp_path / "b"), sample_inputs=x, sample_conditions=c[:5])
    unconditional = VAE(input_shape=(64,), latent_dim=2)
    with pytest.raises(ValueError, match=r"sample_conditions: this model is unconditional"):
        tfvae.export.save(unconditional, str(tmp_path / "c"), sample_conditions=c, allow_untrained=True)
    assert not os.listdir(tmp_path)
    # Without sample_inputs, the parity batch is the model's own draws under uniform conditions.
    manifest = tfvae.export.save(conditional, str(tmp_path / "d"), tflite=False)
    assert manifest["parity"]["inputs"] == "64 model samples x ~ p(x|z, c), z ~ p(z) (no sample_inputs given)"
    assert set(manifest["parity"]["max_abs_diff"]) == {"encode", "decode", "reconstruct", "sample_seeded"}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`tfvae train --condition labels` on the digits in a subprocess; `sample --condition`, `evaluate` and
    `export` of the run in this process (test_cli runs commands in their own)."""
    workdir = tmp_path_factory.mktemp("cli")
    trained = run_tfvae("train", "--dataset", "digits", "--condition", "labels", "--latent-dim", 4, "--epochs", 15,
                        "--batch-size", 50, "--learning-rate", 3e-3, "--out", "cvae", cwd=workdir)
    assert trained.returncode == 0, trained.stderr
    assert "tfvae sample cvae --condition C" in trained.stdout
    run = str(workdir / "cvae")
    with contextlib.redirect_stdout(io.StringIO()) as sampled:
        status = main(["sample", run, "--condition", "3", "-n", "50", "-o", str(workdir / "threes.npy"), "--seed", "0"])
    sample = subprocess.CompletedProcess(["sample"], status, sampled.getvalue(), "")
    with contextlib.redirect_stdout(io.StringIO()) as evaluated:
        status = {"evaluate": main(["evaluate", run, "--num-samples", "10", "--json"])}
    report = evaluated.getvalue()
    with contextlib.redirect_stdout(io.StringIO()):
        status["export"] = main(["export", run, "--out", str(workdir / "export"), "--no-tflite",
                                 "--log-prob-samples", "10"])
    from sklearn.datasets import load_digits

    digits = load_digits()
    for name, labels in (("right", digits.target[1500:1600]), ("wrong", (digits.target[1500:1600] + 1) % CLASSES)):
        np.savez(workdir / f"{name}.npz", x=digits.images[1500:1600] / 16.0, y=labels)
        with contextlib.redirect_stdout(io.StringIO()):
            status[f"score {name}"] = main(["score", run, "--input", str(workdir / f"{name}.npz"),
                                            "-o", str(workdir / f"{name}.csv"), "--num-samples", "10"])
    return workdir, trained, {"sample": sample, "status": status, "report": report}


@pytest.mark.slow
def test_cli_trains_a_conditional_run_and_samples_a_class(cli_run, classifier):
    workdir, trained, results = cli_run
    assert "samples.png has a column per class" in trained.stdout
    assert results["sample"].returncode == 0, results["sample"].stderr
    assert results["status"] == {"evaluate": 0, "export": 0, "score right": 0, "score wrong": 0}
    # `score` takes each input's label from the .npz as its condition: under the wrong class, a digit is unlike the data.
    scores = {}
    for name in ("right", "wrong"):
        with open(workdir / f"{name}.csv", newline="") as f:
            scores[name] = np.array([float(row["score"]) for row in csv.DictReader(f)])
    assert len(scores["right"]) == 100 and scores["wrong"].mean() > scores["right"].mean()
    config = json.loads((workdir / "cvae" / "config.json").read_text())
    assert config["condition"] == "labels"
    assert keras.models.load_model(workdir / "cvae" / "model.keras").condition_shape == (CLASSES,)
    assert "Wrote 50 samples of class 3 (seed 0)" in results["sample"].stdout
    threes = np.load(workdir / "threes.npy").reshape(50, 64)
    assert np.mean(classifier.predict((threes > 0.5).astype(np.float32)) == 3) >= 0.8
    report = json.loads(results["report"])
    assert report["num_examples"] == 297 and report["log_likelihood"] > report["elbo"] - 1
    manifest = json.loads((workdir / "export" / "manifest.json").read_text())
    assert manifest["condition_shape"] == [CLASSES]
    # tfvae train's diagnostics score the test images under their classes, every 5 epochs.
    with open(workdir / "cvae" / "history.csv", newline="") as f:
        diagnosed = [row["val_log_likelihood"] for row in csv.DictReader(f)]
    assert [value != "NA" for value in diagnosed] == [(epoch + 1) % 5 == 0 for epoch in range(15)]
    assert float(diagnosed[-1]) > report["elbo"] - 1
    assert "sample_conditions" in manifest["parity"]["inputs"]
    # samples.png: six rows of one sample per class, a column per class.
    from PIL import Image

    tile = 8 * tfvae.plots.default_scale(8, 8) + 1
    with Image.open(workdir / "cvae" / "samples.png") as png:
        assert png.size == (CLASSES * tile + 1, 6 * tile + 1)
    with Image.open(workdir / "cvae" / "reconstructions.png") as png:
        assert png.size == (CLASSES * tile + 1, 8 * tile + 1)  # 32 images in rows of 10: 4 rows, each reconstructed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--condition", 10], "tfvae: error: --condition: expected a class from 0 to 9; got 10."),
        ([], "tfvae: error: --condition: this run's model is conditional; give the class to draw, 0 to 9."),
        (["--condition", "-1"], "argument --condition: expected a class index, an integer >= 0; got '-1'"),
        (["--condition", "three"], "argument --condition: expected a class index"),
    ],
)
def test_cli_sample_refuses_a_bad_class_in_one_line(cli_run, capsys, argv, message):
    workdir, _, _ = cli_run
    check_error(capsys, ["sample", workdir / "cvae", "-o", workdir / "bad.npy", *argv], message)
    assert not (workdir / "bad.npy").exists()


def test_cli_refuses_a_condition_for_an_unconditional_run_or_a_dataset_without_labels(tmp_path, capsys):
    run = tmp_path / "plain"
    run.mkdir()
    VAE(input_shape=(8, 8, 1), latent_dim=2).save(run / "model.keras")
    check_error(capsys, ["sample", run, "--condition", 3, "-o", tmp_path / "s.npy"],
                "tfvae: error: --condition: this run's model is unconditional")
    np.save(tmp_path / "unlabelled.npy", np.zeros((60, 8, 8), np.float32))
    check_error(capsys, ["train", "--dataset", tmp_path / "unlabelled.npy", "--condition", "labels", "--out",
                         tmp_path / "r"], "tfvae: error: --condition labels: the dataset")
    assert not (tmp_path / "r").exists()
    check_error(capsys, ["train", "--condition", "classes"], "argument --condition: invalid choice: 'classes'")


def test_predict_and_validation_split_take_the_conditions(conditional, labelled_digits):
    x, c, *_ = labelled_digits
    expected = conditional.reconstruct(x[:30], condition=c[:30]).numpy()
    np.testing.assert_allclose(conditional.predict(x[:30], condition=c[:30], verbose=0), expected, atol=1e-5)
    pairs = tf.data.Dataset.from_tensor_slices((x[:30], c[:30])).batch(7)
    np.testing.assert_allclose(conditional.predict(pairs, verbose=0), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"condition: this model is conditional"):
        conditional.predict(x[:30], verbose=0)
    with pytest.raises(ValueError, match=r"condition: a dataset carries its own conditions"):
        conditional.predict(pairs, condition=c[:30], verbose=0)
    with pytest.raises(ValueError, match=r"condition: this model is unconditional"):
        VAE(input_shape=(64,), latent_dim=2).predict(x[:5], condition=c[:5], verbose=0)
    model = VAE(input_shape=(64,), latent_dim=2, condition_shape=(CLASSES,))
    history = model.fit(x[:200], c[:200], validation_split=0.25, epochs=1, batch_size=50, verbose=0)
    assert np.isfinite(history.history["val_elbo"][0])


def test_fit_on_arrays_takes_the_gather_pipeline_with_the_conditions(labelled_digits, monkeypatch):
    # The conditions travel with their x through tfvae.data.make_dataset (one label row per example),
    # for validation_split (the last 50) and for validation_data pairs, not through Keras's array adapter.
    x, c, *_ = labelled_digits
    made = []
    original = tfvae.data.make_dataset

    def recording(x, batch_size, *args, **kwargs):
        made.append((len(x), None if kwargs.get("labels") is None else len(kwargs["labels"])))
        return original(x, batch_size, *args, **kwargs)

    monkeypatch.setattr(tfvae.data, "make_dataset", recording)
    model = VAE(input_shape=(64,), latent_dim=2, condition_shape=(CLASSES,), seed=0)
    history = model.fit(x[:200], c[:200], validation_split=0.25, epochs=1, batch_size=50, verbose=0)
    assert made[:2] == [(50, 50), (150, 150)]
    assert len(history.history["val_elbo"]) == 1 and np.isfinite(history.history["val_elbo"][0])
    model.fit(x[:100], c[:100], validation_data=(x[150:200], c[150:200]), epochs=1, batch_size=50, verbose=0)
    assert made[-2:] == [(50, 50), (100, 100)]
