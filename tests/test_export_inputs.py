"""Exported signatures refuse what they cannot answer, in the SavedModel and in LiteRT (issue 17):
regrouped or broadcast shapes, NaN and inf, x outside the likelihood's support and negative counts.
Right inputs, empty batches included, still get the Keras model's answers."""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tfvae
from tfvae import heads, export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVENT_SHAPE = (8, 8, 1)
LATENT_DIM = 2
RUNTIMES = ("saved_model", "tflite")
X_SIGNATURES = ("encode", "reconstruct", "elbo", "log_prob")
# Deterministic outputs: max |Keras - runtime|, as parity.TOLERANCE.
TOLERANCE = {"saved_model": 1e-5, "tflite": 1e-4}


@pytest.fixture(scope="module")
def exported(digits, tmp_path_factory):
    """A Bernoulli VAE on 8x8x1 digits (rank 4, so batches can be regrouped), exported once, and a
    runner per runtime, run(signature, **inputs) -> {output: numpy array}, and the export directory."""
    x_train, x_test = (x.reshape(-1, *EVENT_SHAPE) for x in digits)
    keras.utils.set_random_seed(3)
    model = tfvae.VAE(input_shape=EVENT_SHAPE, latent_dim=LATENT_DIM)
    model.fit(x_train[:500], epochs=1, batch_size=100, verbose=0)
    directory = str(tmp_path_factory.mktemp("export") / "digits")
    export.save(model, directory, log_prob_samples=10, sample_inputs=x_test)
    loaded = tf.saved_model.load(os.path.join(directory, "saved_model")).signatures
    # One interpreter for every call: a refused input must not leave it unable to answer the next.
    interpreter = Interpreter(model_path=os.path.join(directory, "model.tflite"))

    def saved_model(signature, **inputs):
        outputs = loaded[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    def tflite(signature, **inputs):
        return interpreter.get_signature_runner(signature)(**inputs)

    return model, x_test, {"saved_model": saved_model, "tflite": tflite}, directory


def _refused(run, runtime, match, signature, **inputs):
    """Asserts the call fails: TensorFlow with `match` in its message, LiteRT failing to run the graph."""
    if runtime == "saved_model":
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            run(signature, **inputs)
    else:
        with pytest.raises(RuntimeError):
            run(signature, **inputs)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(
    "shape", [(2, 1, 8, 8), (3, 8, 8, 2), (1, 8, 8, 1, 1), (3, 1, 1, 1), (4, 8, 8), (8, 8, 1), (2, 64), (3,)]
)
def test_x_of_another_shape_is_refused_not_regrouped(exported, runtime, shape):
    _, _, runs, _ = exported
    x = np.full(shape, 0.5, np.float32)
    for signature in X_SIGNATURES + (("serving_default",) if runtime == "saved_model" else ()):
        _refused(runs[runtime], runtime, r"x: expected shape \(batch, 8, 8, 1\); got shape", signature, x=x)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("shape", [(5, 1), (5, 3), (5, 2, 1), (2,)])
def test_z_of_another_shape_is_refused_not_broadcast(exported, runtime, shape):
    _, _, runs, _ = exported
    z = np.zeros(shape, np.float32)
    _refused(runs[runtime], runtime, r"z: expected shape \(batch, 2\); got shape", "decode", z=z)


@pytest.mark.parametrize("runtime", RUNTIMES)
# (Not -1e-45: TensorFlow's CPU threads treat subnormals as 0, so the SavedModel reads it as -0.)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, -1.0, 1.5, 1e30, 1.0 + 2**-23])
def test_x_that_is_not_finite_or_outside_the_bernoulli_support_is_refused(exported, runtime, value):
    _, x_test, runs, _ = exported
    x = x_test[:3].copy()
    x[1, 4, 2, 0] = value  # one bad pixel among 192
    for signature in X_SIGNATURES:
        _refused(runs[runtime], runtime, "x: expected finite values in the support of the Bernoulli likelihood",
                 signature, x=x)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("value", [1e-45, 1e-39, 1.0 - 2**-24])
def test_x_at_the_edges_of_the_bernoulli_support_is_answered(exported, runtime, value):
    # Subnormal pixels are in [0, 1]: LiteRT's XNNPack clamp flushes them to 0, so a support check
    # written as clip(x, 0, 1) == x refused them there (Hypothesis found x = 1e-45).
    _, x_test, runs, _ = exported
    x = np.full((2, *EVENT_SHAPE), value, np.float32)
    for signature in X_SIGNATURES:
        outputs = runs[runtime](signature, x=x)
        assert all(np.all(np.isfinite(v)) for v in outputs.values()), signature


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_z_that_is_not_finite_is_refused(exported, runtime, value):
    _, _, runs, _ = exported
    z = np.zeros((4, LATENT_DIM), np.float32)
    z[2, 1] = value
    _refused(runs[runtime], runtime, r"z: expected finite values", "decode", z=z)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_negative_or_non_scalar_counts_and_seeds_are_refused(exported, runtime):
    _, _, runs, _ = exported
    run, seed = runs[runtime], np.int32(7)
    negative = "num_samples: expected a count >= 0"
    for n in (np.int32(-1), np.int32(-2**31)):  # the old TFLite graph answered -1 with the last call's count
        _refused(run, runtime, negative, "sample", num_samples=n)
        _refused(run, runtime, negative, "sample_seeded", num_samples=n, seed=seed)
    for n in (np.array([2, 3], np.int32), np.array([2], np.int32)):
        _refused(run, runtime, "num_samples_must_be_a_scalar", "sample", num_samples=n)
        _refused(run, runtime, "num_samples_must_be_a_scalar", "sample_seeded", num_samples=n, seed=seed)
    for bad_seed in (np.array([7, 8], np.int32), np.array([7], np.int32)):
        _refused(run, runtime, "seed_must_be_a_scalar", "sample_seeded", num_samples=np.int32(2),
                 seed=bad_seed)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_right_inputs_of_one_three_and_no_rows_get_the_keras_answers(exported, runtime):
    model, x_test, runs, _ = exported
    run, atol = runs[runtime], TOLERANCE[runtime]
    # After refusals (earlier tests share the interpreter), and between them, answers are still right.
    _refused(run, runtime, "x: expected shape", "encode", x=np.zeros((3, 1, 1, 1), np.float32))
    for rows in (1, 3):
        x = x_test[10 : 10 + rows]
        q = model.encode(x)
        z = q.mean().numpy()
        encoded = run("encode", x=x)
        np.testing.assert_allclose(encoded["z_mean"], z, rtol=0, atol=atol)
        np.testing.assert_allclose(encoded["z_stddev"], q.stddev(), rtol=0, atol=atol)
        decoded = run("decode", z=z)["x_mean"]
        np.testing.assert_allclose(decoded, model.decode(z).mean(), rtol=0, atol=atol)
        np.testing.assert_allclose(run("reconstruct", x=x)["x_mean"], model.reconstruct(x), rtol=0, atol=atol)
        for signature in ("elbo", "log_prob"):
            value = run(signature, x=x)[signature]
            assert value.shape == (rows,) and np.all(np.isfinite(value)) and np.all(value < 0), signature
    empty_x, empty_z = np.zeros((0, *EVENT_SHAPE), np.float32), np.zeros((0, LATENT_DIM), np.float32)
    assert run("encode", x=empty_x)["z_mean"].shape == (0, LATENT_DIM)
    assert run("encode", x=empty_x)["z_stddev"].shape == (0, LATENT_DIM)
    assert run("decode", z=empty_z)["x_mean"].shape == (0, *EVENT_SHAPE)
    assert run("reconstruct", x=empty_x)["x_mean"].shape == (0, *EVENT_SHAPE)
    assert run("elbo", x=empty_x)["elbo"].shape == (0,)
    assert run("log_prob", x=empty_x)["log_prob"].shape == (0,)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sample_counts_of_zero_and_more(exported, runtime):
    _, _, runs, _ = exported
    run = runs[runtime]
    for n in (0, 1, 3):
        images = run("sample", num_samples=np.int32(n))["x_mean"]
        seeded = run("sample_seeded", num_samples=np.int32(n), seed=np.int32(5))["x_mean"]
        assert images.shape == seeded.shape == (n, *EVENT_SHAPE)
        assert np.all((images >= 0) & (images <= 1)) and np.all((seeded >= 0) & (seeded <= 1))


def test_likelihood_heads_give_their_support_in_graph_form():
    x = tf.constant([[-1.0, 0.0, 0.3, 1.0, 1.5, np.nan]])
    bernoulli = heads.Bernoulli(event_shape=(6,)).in_support(x)
    np.testing.assert_array_equal(bernoulli, [[False, True, True, True, False, False]])
    # A head without the hook: every value (finiteness is checked on its own).
    np.testing.assert_array_equal(heads.in_support(heads.Gaussian(event_shape=(6,)), x), np.ones((1, 6), bool))


@pytest.mark.slow
def test_consumer_scripts_refuse_in_one_line(exported, tmp_path):
    _, x_test, _, directory = exported
    bad_values = x_test[:2].copy()
    bad_values[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "regrouped.npy", x_test[:2].reshape(2, 1, 8, 8))
    np.save(tmp_path / "nan.npy", bad_values)
    expected = {
        ("run_tflite.py", "regrouped.npy"): r"--input: expected x of shape \(batch, 8, 8, 1\); got \(2, 1, 8, 8\)\.",
        ("run_tflite.py", "nan.npy"): r"--input: the encode signature refused it \(see export/README.md\)",
        ("serve_saved_model.py", "nan.npy"): (
            r"--input: the encode signature refused it: .*x: expected finite values in the support of the "
            r"Bernoulli likelihood"
        ),
    }
    for (script, name), message in expected.items():
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, "export", script), "--model", directory, "--signature", "encode",
             "--input", str(tmp_path / name)],
            capture_output=True, text=True,
        )
        assert result.returncode == 1 and result.stdout == "", (script, name, result.stderr[-2000:])
        last_line = result.stderr.strip().splitlines()[-1]
        assert re.match(message, last_line), (script, name, last_line)


# Property: every input is refused (an exception before or inside the graph) or answered with finite
# values of the documented shape, and it is answered exactly when it is valid.
REFUSALS = (tf.errors.InvalidArgumentError, RuntimeError, ValueError, TypeError)
DTYPES = [np.float32] * 4 + [np.float64, np.int32, np.bool_, np.complex64, np.dtype("<U2")]
ODD_FLOATS = [np.nan, np.inf, -np.inf, -1.0, 1.5, -0.0, 1e-45, 3e38, -3e38]


@st.composite
def _batch_inputs(draw):
    """(signature, {input name: array}) for a signature taking x or z: mostly right-shaped
    float32 batches of valid values, with odd shapes, dtypes and values mixed in."""
    signature = draw(st.sampled_from(X_SIGNATURES + ("decode",)))
    feature_shape = (LATENT_DIM,) if signature == "decode" else EVENT_SHAPE
    right_shape = st.integers(0, 4).map(lambda rows: (rows, *feature_shape))
    any_shape = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=9)
    shape = draw(st.one_of(right_shape, right_shape, any_shape))
    dtype = draw(st.sampled_from(DTYPES))
    if dtype != np.float32:
        value = draw(hnp.arrays(dtype, shape))
    else:
        if signature == "decode":
            valid = st.floats(width=32, allow_nan=False, allow_infinity=False)  # any finite z
        else:
            valid = st.floats(0, 1, width=32)  # the Bernoulli support
        elements = st.one_of(valid, st.sampled_from(ODD_FLOATS)) if draw(st.booleans()) else valid
        value = draw(hnp.arrays(dtype, shape, elements=elements))
    return signature, {"z" if signature == "decode" else "x": value}


@st.composite
def _count_inputs(draw):
    signature = draw(st.sampled_from(["sample", "sample_seeded"]))
    count = st.one_of(st.integers(0, 12), st.integers(0, 12), st.integers(-(2**31), -1)).map(np.int32)
    inputs = {"num_samples": draw(st.one_of(count, count, hnp.arrays(np.int32, st.integers(0, 3))))}
    if signature == "sample_seeded":
        seed = st.integers(-(2**31), 2**31 - 1).map(np.int32)
        inputs["seed"] = draw(st.one_of(seed, seed, hnp.arrays(np.int32, st.integers(0, 3))))
    return signature, inputs


def _documented_shapes(signature, rows):
    return {
        "encode": {"z_mean": (rows, LATENT_DIM), "z_stddev": (rows, LATENT_DIM)},
        "decode": {"x_mean": (rows, *EVENT_SHAPE)},
        "reconstruct": {"x_mean": (rows, *EVENT_SHAPE)},
        "sample": {"x_mean": (rows, *EVENT_SHAPE)},
        "sample_seeded": {"x_mean": (rows, *EVENT_SHAPE)},
        "elbo": {"elbo": (rows,)},
        "log_prob": {"log_prob": (rows,)},
    }[signature]


def _rows_if_valid(signature, inputs):
    """The rows a valid input asks for, or None if the signatures must refuse it."""
    if signature in ("sample", "sample_seeded"):
        n, seed = inputs["num_samples"], inputs.get("seed", np.int32(0))
        return int(n) if np.ndim(n) == 0 and np.ndim(seed) == 0 and n >= 0 else None
    (name, value), = inputs.items()
    feature_shape = (LATENT_DIM,) if name == "z" else EVENT_SHAPE
    if value.dtype != np.float32 or value.shape[1:] != feature_shape or value.ndim != 1 + len(feature_shape):
        return None
    in_support = np.all(np.isfinite(value)) and (name == "z" or np.all((value >= 0) & (value <= 1)))
    return len(value) if in_support else None


def _check_property(exported, signature, inputs):
    _, _, runs, _ = exported
    rows = _rows_if_valid(signature, inputs)
    event(f"{signature}: {'answered' if rows is not None else 'refused'}")
    for runtime, run in runs.items():
        try:
            outputs = run(signature, **inputs)
        except REFUSALS:
            assert rows is None, (runtime, signature, "refused a valid input")
            continue
        assert rows is not None, (runtime, signature, "answered an invalid input")
        assert {k: v.shape for k, v in outputs.items()} == _documented_shapes(signature, rows), runtime
        assert all(np.all(np.isfinite(v)) for v in outputs.values()), (runtime, signature)


FAST = settings(max_examples=30, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=1500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(case=st.one_of(_batch_inputs(), _count_inputs()))
def test_any_input_is_refused_or_answered_finitely_in_the_documented_shape(exported, case):
    _check_property(exported, *case)


@pytest.mark.slow
@LONG
@given(case=st.one_of(_batch_inputs(), _count_inputs()))
def test_any_input_is_refused_or_answered_finitely_in_the_documented_shape_long(exported, case):
    _check_property(exported, *case)
