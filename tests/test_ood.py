"""tfvae.OutlierDetector and its scores on a digits model: the numbers each score's definition predicts,
conformal p-values, saving with the model, export, and refusals."""

import bz2
import math
import zipfile

import keras
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import tfvae
from digits_models import digits_as, two_d_model, train
from tfvae import ood
from tfvae.ood import coders, conformal, learned_context


@pytest.fixture(scope="module")
def binary():
    """(a Bernoulli model trained on binarized digits, its held-out test images, binary noise images)."""
    _, model, x_test, _ = train("bernoulli", two_d_model, "binary")
    noise = (np.random.default_rng(0).random((150, 64)) < 0.5).astype(np.float32)
    return model, x_test, noise


def auroc(inside, outside):
    return roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside])


def test_p_values_count_the_calibration_scores_at_least_as_high():
    np.testing.assert_allclose(conformal.p_values([3.0, 1.0, 4.0, 2.0], [0.0, 2.0, 2.5, 5.0]), [1.0, 0.8, 0.6, 0.2])
    # Against the other n - 1: a tie counts the other, never itself.
    np.testing.assert_allclose(conformal.leave_one_out_p_values([1.0, 2.0, 2.0, 3.0]), [1.0, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(conformal.fisher([np.array([1.0, 0.5]), np.array([0.25, 1.0])]),
                               [-2 * math.log(0.25), -2 * math.log(0.5)])


def test_a_rate_needs_enough_calibration_examples_to_resolve_it():
    assert conformal.examples_needed(0.05) == 19 and conformal.examples_needed(0.01) == 99
    conformal.check_resolves(19, 0.05)
    with pytest.raises(ValueError, match=r"false_positive_rate: 0.05 needs at least 19 calibration examples"):
        conformal.check_resolves(18, 0.05)


def test_log_prob_inference_gap_and_complexity_are_their_definitions(binary):
    model, x, _ = binary
    terms = {k: np.asarray(v, np.float64) for k, v in
             tfvae.ood.Evidence(model, model.as_input(x[:50]), None, seed=0).importance(100).items()}
    log_prob = model.log_prob(x[:50], num_samples=100, seed=0).numpy()
    np.testing.assert_allclose(tfvae.OutlierDetector(model, "log_prob").score(x[:50]), -log_prob, rtol=1e-6)
    gap = tfvae.OutlierDetector(model, "inference_gap").score(x[:50])
    np.testing.assert_allclose(gap, terms["log_prob"] - terms["reconstruction"] + terms["kl"], rtol=1e-6, atol=1e-6)
    # KL(q(z|x) || p(z|x)) >= 0: positive but for Monte Carlo error (the ELBO's KL term is analytic).
    assert gap.mean() > 0 and np.mean(gap > 0) > 0.9
    bits = np.array([8 * len(bz2.compress(np.packbits(row.astype(bool)).tobytes())) for row in x[:50]])
    np.testing.assert_allclose(tfvae.OutlierDetector(model, "complexity", coder="bits").score(x[:50]),
                               -log_prob / math.log(2) - bits, rtol=1e-6)
    np.testing.assert_allclose(tfvae.OutlierDetector(model, "complexity", coder="context").score(x[:50]),
                               -log_prob / math.log(2) - [sequential_context_bits(row.reshape(8, 8)) for row in x[:50]],
                               rtol=1e-5)
    # The default coder of binary images learns its rates from the calibration data.
    learned = tfvae.OutlierDetector(model, "complexity").calibrate(x[50:150])
    counts = counted_contexts(x[50:150])
    np.testing.assert_allclose(learned.score(x[:50]), -log_prob / math.log(2) - [
        min(learned_bits(row.reshape(8, 8), counts), sequential_context_bits(row.reshape(8, 8))) + 1 for row in x[:50]],
        rtol=1e-5)


def sequential_context_bits(image):
    """-log2 of the probability an adaptive coder gives a binary image pixel by pixel in raster order: each pixel's
    Krichevsky-Trofimov estimate (count + 1/2) / (seen + 1) in its context of left, up-left, up, up-right pixels."""
    padded = np.pad(image, ((1, 0), (1, 1)))
    counts = np.zeros((16, 2))
    bits = 0.0
    for i in range(image.shape[0]):
        for j in range(image.shape[1]):
            context = int(padded[i + 1, j] + 2 * padded[i, j] + 4 * padded[i, j + 1] + 8 * padded[i, j + 2])
            pixel = int(image[i, j])
            bits -= math.log2((counts[context, pixel] + 0.5) / (counts[context].sum() + 1.0))
            counts[context, pixel] += 1
    return bits


def template_contexts(image):
    """Each pixel's context under `learned_context.TEMPLATE`, one pixel at a time (pixels outside the image 0)."""
    padded = np.pad(image, ((2, 0), (2, 2)))
    height, width = image.shape
    return [[sum(int(padded[i + 2 + dy, j + 2 + dx]) << bit for bit, (dy, dx) in enumerate(learned_context.TEMPLATE))
             for j in range(width)] for i in range(height)]


def counted_contexts(images):
    """{context: [zeros, ones]} over the images [N, 64]."""
    counts = {}
    for image in images:
        image = image.reshape(8, 8)
        for i, row in enumerate(template_contexts(image)):
            for j, context in enumerate(row):
                counts.setdefault(context, [0, 0])[int(image[i, j])] += 1
    return counts


def learned_bits(image, counts):
    """-log2 prod over pixels of the counted rate (count + 1/2) / (seen + 1) of the pixel's value in its context."""
    bits = 0.0
    for i, row in enumerate(template_contexts(image)):
        for j, context in enumerate(row):
            seen = counts.get(context, [0, 0])
            bits -= math.log2((seen[int(image[i, j])] + 0.5) / (sum(seen) + 1.0))
    return bits


def test_the_learned_coder_codes_a_calibration_image_with_the_others_counts(binary):
    _, x, noise = binary
    everything = learned_context.Counts.count([x[:40]])
    left_out = everything.code_lengths(x[:40], leave_out=True).numpy()
    for i in (0, 17, 39):
        others = learned_context.Counts.count([np.delete(x[:40], i, axis=0)])
        np.testing.assert_allclose(left_out[i], others.code_lengths(x[i : i + 1]).numpy()[0], rtol=1e-9)
    # Counted in batches or at once, the same counts; with itself counted, an image codes shorter.
    np.testing.assert_array_equal(learned_context.Counts.count([x[:15], x[15:40]]).seen, everything.seen)
    assert np.all(everything.code_lengths(x[:40]).numpy() <= left_out + 1e-9)
    # Noise is coded by the adaptive coder instead, plus the bit that says so.
    np.testing.assert_allclose(everything.code_lengths(noise[:5]).numpy(),
                               [min(learned_bits(n.reshape(8, 8), counted_contexts(x[:40])),
                                    sequential_context_bits(n.reshape(8, 8))) + 1 for n in noise[:5]], rtol=1e-5)


def test_the_context_coder_is_shorter_than_bz2_on_images_and_longer_on_noise(binary):
    _, x, noise = binary
    context, packed = coders.code_lengths(x, "context"), coders.code_lengths(x, "bits")
    assert context.mean() < packed.mean()
    # Noise has no structure to find: about a bit a pixel, plus what learning 16 contexts' rates costs.
    assert 64 < coders.code_lengths(noise, "context").mean() < 64 + 16 * 3


def test_regret_is_the_elbo_refinement_gains(binary):
    model, x, noise = binary
    regret = tfvae.OutlierDetector(model, "regret", steps=50).score(np.concatenate([x[:100], noise[:100]]))
    assert regret.mean() > 0  # with the same noise, refinement raises the ELBO
    assert regret[100:].mean() > regret[:100].mean()  # the encoder fits its own data best


@pytest.mark.parametrize("method", [None, "combined"])
def test_the_default_and_the_combination_flag_noise_and_hold_their_false_positive_rate(binary, method):
    model, x, noise = binary
    detector = tfvae.OutlierDetector(model, method)
    assert detector.method.name == (method or ood.DEFAULT_METHOD) and ood.DEFAULT_METHOD == "complexity"
    detector.calibrate(x[:150])
    fresh = x[150:]
    assert auroc(detector.score(fresh), detector.score(noise)) > 0.97
    flagged = detector.predict(fresh, false_positive_rate=0.2)
    # Exchangeable data: the flagged share is Binomial(147, <= 0.2); 3 standard deviations is 0.1.
    assert flagged.mean() <= 0.3
    assert detector.predict(noise, false_positive_rate=0.05).mean() > 0.8
    p = detector.p_value(fresh)
    assert np.all((p > 0) & (p <= 1)) and p.min() >= 1 / 151


def test_calibration_is_needed_for_p_values_and_for_the_combination(binary):
    model, x, _ = binary
    complexity = tfvae.OutlierDetector(model, "complexity", coder="context")
    assert complexity.score(x[:5]).shape == (5,)
    with pytest.raises(ValueError, match=r"p_value: the detector is not calibrated; call calibrate"):
        complexity.p_value(x[:5])
    with pytest.raises(ValueError, match=r"predict: the detector is not calibrated"):
        complexity.predict(x[:5])
    for method in ("combined", None):  # the default's coder learns its rates from the calibration data
        with pytest.raises(ValueError, match=r"score: the '(combined|complexity)' method learns from in-distribution "
                                             r"data; call calibrate\(x_in\) first"):
            tfvae.OutlierDetector(model, method).score(x[:5])
    with pytest.raises(ValueError, match=r"false_positive_rate: 0.01 needs at least 99 calibration examples.*on 20"):
        complexity.calibrate(x[:20]).predict(x[:5], false_positive_rate=0.01)


def test_bad_methods_options_and_inputs_are_refused(binary):
    model, x, _ = binary
    with pytest.raises(ValueError, match=r"method: expected one of log_prob, inference_gap, complexity, regret, "
                                         r"combined(, .*)? or a tfvae.ood.Score; got 'typicality'"):
        tfvae.OutlierDetector(model, "typicality")
    with pytest.raises(TypeError, match=r"options: .*steps"):
        tfvae.OutlierDetector(model, "log_prob", steps=3)
    with pytest.raises(ValueError, match=r"coder: expected one of learned, context, bits, png, bz2; got 'gzip'"):
        tfvae.OutlierDetector(model, "complexity", coder="gzip")
    with pytest.raises(ValueError, match=r"scores: expected two or more different scores"):
        tfvae.OutlierDetector(model, "combined", scores=["log_prob"])
    detector = tfvae.OutlierDetector(model, "log_prob")
    with pytest.raises(ValueError, match=r"x: expected a batch of shape \(batch, 64\); got shape \(3, 8, 8\)"):
        detector.calibrate(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"x: .*NaN"):
        detector.score(np.full((2, 64), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"x: the 'learned' coder codes binary images .*got values strictly between, e.g. 0.5"):
        tfvae.OutlierDetector(model, "complexity").calibrate(np.full((20, 64), 0.5, np.float32))
    with pytest.raises(ValueError, match=r"false_positive_rate: expected a number in \(0, 1\); got 1.5"):
        detector.calibrate(x[:30]).predict(x[:2], false_positive_rate=1.5)


def test_a_detector_saves_and_loads_with_its_model(binary, tmp_path):
    model, x, _ = binary
    detector = tfvae.OutlierDetector(model, "combined", num_samples=50).calibrate(x[:100])
    path = tmp_path / "detector.keras"
    detector.save(path)
    loaded = tfvae.OutlierDetector.load(path)
    assert loaded.method.name == "combined" and loaded.method.num_samples == 50
    np.testing.assert_array_equal(loaded.calibration_scores, detector.calibration_scores)
    np.testing.assert_array_equal(loaded.p_value(x[100:150]), detector.p_value(x[100:150]))
    # The file is still the model's: Keras reads it alone.
    assert isinstance(keras.models.load_model(path), tfvae.VAE)
    with pytest.raises(FileExistsError, match=r"path: .* exists; pass overwrite=True"):
        detector.save(path)
    model.save(tmp_path / "model.keras")
    with pytest.raises(ValueError, match=r"holds a model without a detector"):
        tfvae.OutlierDetector.load(tmp_path / "model.keras")
    assert zipfile.ZipFile(path).namelist().count("tfvae_detector.json") == 1


@ood.register
class NegativeReconstruction(ood.Score):
    """A user's score: -E_q log p(x|z), from the importance-sampling terms (so it exports too)."""

    name = "negative_reconstruction"

    @staticmethod
    def from_terms(terms, x):
        return -terms["reconstruction"]


def test_a_user_written_score_is_a_method_and_combines(binary, tmp_path):
    model, x, _ = binary
    user = tfvae.OutlierDetector(model, "negative_reconstruction", num_samples=20)
    terms = tfvae.ood.Evidence(model, model.as_input(x[:10]), None, seed=0).importance(20)
    np.testing.assert_allclose(user.score(x[:10]), -np.asarray(terms["reconstruction"]), rtol=1e-6)
    both = tfvae.OutlierDetector(model, "combined", scores=["negative_reconstruction", "complexity"]).calibrate(x[:50])
    both.save(tmp_path / "d.keras")
    np.testing.assert_array_equal(tfvae.OutlierDetector.load(tmp_path / "d.keras").score(x[50:60]), both.score(x[50:60]))


def test_the_command_line_offers_the_built_in_methods():
    from tfvae import cli

    assert set(cli.OOD_METHODS) == set(ood.BUILT_IN) and cli.OOD_METHODS[0] == ood.DEFAULT_METHOD


def test_every_likelihood_gets_a_coder_and_conditions_pass_through():
    grey = tfvae.VAE(input_shape=(8, 8, 1), latent_dim=2, likelihood="continuous_bernoulli", seed=0)
    counts = tfvae.VAE(input_shape=(64,), latent_dim=2, likelihood="poisson", seed=0)
    assert coders.default_coder(grey) == "png" and coders.default_coder(counts) == "bz2"
    x_grey, _ = digits_as("levels")
    assert np.all(np.isfinite(tfvae.OutlierDetector(grey, "complexity").score(x_grey[:4].reshape(4, 8, 8, 1))))
    x_counts, _ = digits_as("counts")
    assert np.all(np.isfinite(tfvae.OutlierDetector(counts, "complexity").score(x_counts[:4])))
    conditional = tfvae.VAE(input_shape=(64,), latent_dim=2, condition_shape=(10,), seed=0)
    x, condition = digits_as("binary")[0][:6], np.eye(10, dtype=np.float32)[np.arange(6)]
    np.testing.assert_allclose(tfvae.OutlierDetector(conditional, "log_prob").score(x, condition),
                               -conditional.log_prob(x, 100, condition=condition, seed=0).numpy(), rtol=1e-6)


@pytest.mark.slow
def test_the_export_scores_in_every_runtime_as_the_detector_it_names(binary, tmp_path):
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    model, x, noise = binary
    detector = tfvae.OutlierDetector(model).calibrate(x[:150])
    manifest = tfvae.export.save(model, tmp_path / "e", detector=detector, sample_inputs=x)
    # The learned coder is TensorFlow ops, its counts constants: the whole default runs in the export.
    assert manifest["anomaly_score"] == {"method": "complexity", "coder": "learned", "num_samples": 100,
                                         "calibration_size": 150, "detector_method": "complexity"}
    assert detector.exported() is detector
    assert "anomaly_score" in manifest["tflite_signatures"]
    exported = detector.exported()
    inputs = np.concatenate([x[150:], noise])
    keras_auroc = auroc(exported.score(x[150:]), exported.score(noise))
    saved = tf.saved_model.load(str(tmp_path / "e" / "saved_model")).signatures["anomaly_score"](x=tf.constant(inputs))
    lite = Interpreter(str(tmp_path / "e" / "model.tflite")).get_signature_runner("anomaly_score")(x=inputs)
    for outputs in (saved, lite):
        score, p = np.asarray(outputs["score"]), np.asarray(outputs["p_value"])
        assert abs(auroc(score[:147], score[147:]) - keras_auroc) <= 0.02
        # The p-value is the conformal formula over the exported calibration scores.
        np.testing.assert_allclose(p, conformal.p_values(exported.calibration_scores, score), atol=1e-6)


class EagerOnly(ood.Score):
    """A user's score without a graph form."""

    name = "eager_only"

    def __call__(self, evidence):
        return -evidence.importance(self.num_samples)["reconstruction"]


@pytest.mark.slow
def test_a_detector_without_a_graph_form_exports_the_part_that_has_one_or_is_refused(binary, tmp_path):
    model, x, _ = binary
    # A single score no graph runs exports the inference gap, calibrated on the same data (and saved with it).
    packed = tfvae.OutlierDetector(model, "complexity", coder="bits").calibrate(x[:40])
    packed.save(tmp_path / "packed.keras")
    for detector in (packed, tfvae.OutlierDetector.load(tmp_path / "packed.keras")):
        fallback = detector.exported()
        assert fallback.method.name == "inference_gap"
        np.testing.assert_array_equal(fallback.calibration_scores,
                                      tfvae.OutlierDetector(model, "inference_gap").calibrate(x[:40]).calibration_scores)
    manifest = tfvae.export.save(model, tmp_path / "e", detector=packed, tflite=False, sample_inputs=x)
    assert manifest["anomaly_score"]["method"] == "inference_gap"
    assert manifest["anomaly_score"]["detector_method"] == "complexity"
    # A combination exports the part of it that runs in a graph, or is refused if none does.
    ood.register(EagerOnly)
    mixed = tfvae.OutlierDetector(model, "combined", scores=["regret", "complexity", "log_prob"]).calibrate(x[:40])
    kept = mixed.exported()
    assert list(kept.method.scores) == ["complexity", "log_prob"]
    # Its calibration is the combination's statistic over the kept scores' stored calibration scores.
    np.testing.assert_allclose(kept.calibration_scores, conformal.fisher(
        [conformal.leave_one_out_p_values(mixed.method.reference[name]) for name in ("complexity", "log_prob")]))
    eager = tfvae.OutlierDetector(model, "combined", scores=["regret", "eager_only"]).calibrate(x[:40])
    with pytest.raises(ValueError, match=r"detector: none of the combined scores \['regret', 'eager_only'\] runs in an "
                                         r"exported graph"):
        tfvae.export.save(model, tmp_path / "f", detector=eager)
    assert not (tmp_path / "f").exists()
