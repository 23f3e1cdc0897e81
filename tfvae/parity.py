"""The check an export passes before it is moved into place: every runtime against the Keras model.

On the parity batch (the first PARITY_BATCH rows of the inputs, with rows at the edges of the
likelihood's support) every signature's exact outputs are held to TOLERANCE of Keras's and the
estimates' batch means recorded; up to PARITY_ROWS rows run through every runtime, where no output may
be NaN, inf or +-3.4e38 (LiteRT's lowest float, which isfinite passes) and the exact ones stay within
tolerance of the SavedModel's. `tfvae.export` runs it, and also the estimators' terms row by row
(`tfvae.signatures.Densities`), the check that catches a density wrong on device.
"""

import numpy as np
import tensorflow as tf

from tfvae import heads

# save() refuses an export whose float outputs differ from Keras by more than this (abs and rel).
TOLERANCE = {"saved_model": 1e-5, "tflite": 1e-4}
PARITY_BATCH = 64
# Of sample_inputs, at most this many rows are run through every runtime (in batches of PARITY_BATCH); an
# output that is inf, NaN or +-3.4e38 on any of them fails the export. A few images of a dataset can reach
# parameters the first batch does not.
PARITY_ROWS = 2048
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# What the parity checks ask of the samplers: this many draws, and this seed for the seeded one.
_PARITY_DRAWS, _PARITY_SEED = 3, 7


def inputs(model, sample_inputs, sample_conditions=None):
    """The parity rows: x (as a numpy array), or for a conditional model (x, conditions); and what they are.

    Of sample_inputs, at most PARITY_ROWS rows, evenly spread over them; the first PARITY_BATCH are the
    batch checked against Keras (`_parity`)."""
    if model.condition_shape is None:
        model.as_condition(sample_conditions, name="sample_conditions")  # refuses conditions
    if sample_inputs is not None:
        x = model.as_input(sample_inputs, "sample_inputs").numpy()
        rows = np.unique(np.linspace(0, len(x) - 1, min(len(x), PARITY_ROWS)).astype(int))
        described = f"first {min(len(x), PARITY_BATCH)}; {len(rows)} of {len(x)} in every runtime"
        if model.condition_shape is None:
            return x[rows], f"sample_inputs ({described})"
        conditions = model.as_condition(sample_conditions, len(sample_inputs), "sample_conditions").numpy()
        return (x[rows], conditions[rows]), f"sample_inputs and sample_conditions ({described})"
    conditions = None
    if model.condition_shape is not None:
        if sample_conditions is None:
            sample_conditions = np.random.default_rng(0).uniform(size=(PARITY_BATCH, *model.condition_shape))
        conditions = model.as_condition(sample_conditions, name="sample_conditions")[:PARITY_BATCH]
    # Draws of the model itself lie in the likelihood's support (binary for Bernoulli).
    rows = PARITY_BATCH if conditions is None else int(conditions.shape[0])
    z = model.prior.sample(rows, seed=tf.constant([0, 0], tf.int32))
    x = model.decode(z, condition=conditions).sample(seed=tf.constant([0, 1], tf.int32))
    x = model.as_input(x.numpy())
    if conditions is None:
        return x.numpy(), f"{PARITY_BATCH} model samples x ~ p(x|z), z ~ p(z) (no sample_inputs given)"
    return (x.numpy(), conditions.numpy()), f"{rows} model samples x ~ p(x|z, c), z ~ p(z) (no sample_inputs given)"


def saved_model_runner(path):
    loaded = tf.saved_model.load(path)

    def run(name, **inputs):
        outputs = loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    return run


def tflite_model_runner(flatbuffer):
    """The one signature of a TFLite flatbuffer as a function of numpy inputs."""
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=flatbuffer).get_signature_runner()


def tflite_runner(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)

    def run(name, **inputs):
        return interpreter.get_signature_runner(name)(**inputs)

    return run


def check(module, x, runtimes, likelihood):
    """Each signature of the model (`signatures_lib.signatures_of`) run in every runtime against its Python function
    run eagerly on the Keras model, on the parity batch (the first PARITY_BATCH rows and the support's edge
    rows): max |Keras - runtime| of the exact ones, batch means of the estimates; every output finite
    (not +-3.4e38 either), with one row per input row (per requested sample). The other rows run
    through every runtime, in batches: the exact outputs within tolerance of the SavedModel's, all finite."""
    x, condition = x if isinstance(x, tuple) else (x, None)
    batch = with_edges(x[:PARITY_BATCH], likelihood)
    parity = _parity_of_batch(module, batch, None if condition is None else np.resize(condition, (len(batch), *condition.shape[1:])), runtimes)
    for start in range(PARITY_BATCH, len(x), PARITY_BATCH):
        rows = slice(start, start + PARITY_BATCH)
        _check_runtimes(module, x[rows], None if condition is None else condition[rows], runtimes)
    return parity


def with_edges(x, likelihood):
    """x with rows at the edges of the likelihood's support appended, those of them in its support:
    every element 0, every element 1, x binarized, x's complement, and large counts."""
    candidates = np.stack([np.zeros_like(x[0]), np.ones_like(x[0]), np.round(x[0]), 1.0 - np.round(x[0]),
                           np.round(x[0] * 100.0), np.full_like(x[0], 1e4)])
    valid = tf.reduce_all(tf.reshape(heads.in_support(likelihood, tf.constant(candidates)), (len(candidates), -1)),
                          axis=-1)
    return np.concatenate([x, candidates[valid.numpy()]]).astype(np.float32)


def _signature_inputs(module, x, condition):
    """Every signature input for the rows x (and their conditions): z is the encoder's mean of x."""
    conditioned = {} if condition is None else {"condition": tf.constant(condition)}
    z = module.python_functions["encode"](tf.constant(x), **conditioned)["z_mean"].numpy()
    return {"x": x, "z": z, "num_samples": np.int32(_PARITY_DRAWS), "seed": np.int32(_PARITY_SEED)}


def _signature_rows(module, inputs, condition):
    """(name, signature, its inputs, the rows each output has) for every signature of the export."""
    for name, signature in module.table.items():
        rows = _PARITY_DRAWS if "num_samples" in signature.inputs else len(inputs["x"])
        if condition is not None:  # one condition per row; the samplers' draws cycle through the batch's
            inputs = {**inputs, "condition": np.resize(condition, (rows, *condition.shape[1:]))}
        yield name, signature, {i: inputs[i] for i in signature.inputs}, rows


def _check_runtimes(module, x, condition, runtimes):
    """Rows beyond the parity batch: each runtime's outputs finite, the exact ones within tolerance of the SavedModel's."""
    for name, signature, given, rows in _signature_rows(module, _signature_inputs(module, x, condition), condition):
        if "x" not in signature.inputs and "z" not in signature.inputs:
            continue  # the samplers do not read the data
        results = {runtime: run(name, **given) for runtime, run in runtimes.items()}
        for runtime, actual in results.items():
            for output in signature.outputs:
                check_rows(actual[output], rows, runtime, name, output)
                if signature.parity == "exact" and runtime != "saved_model":
                    check_close(actual[output], results["saved_model"][output], runtime, f"{name}/{output}")


def check_rows(values, rows, runtime, name, output):
    """Raises unless `values` has `rows` rows, all finite and inside float32's range: LiteRT can give
    -3.4e38 (the lowest float32) where TensorFlow gives a number, which every isfinite check passes."""
    if values.shape[:1] != (rows,) or not np.all(np.abs(values) < _FLOAT32_MAX):
        raise RuntimeError(
            f"export: the {runtime} signature {name!r} gave {output} of shape {values.shape} "
            f"with NaN, inf or +-3.4e38, or not {rows} rows."
        )


def _parity_of_batch(module, x, condition, runtimes):
    parity = {"batch_size": int(x.shape[0]), "max_abs_diff": {}, "batch_mean": {}}
    for name, signature, given, rows in _signature_rows(module, _signature_inputs(module, x, condition), condition):
        expected = {k: v.numpy() for k, v in module.python_functions[name](**given).items()}
        results = {runtime: run(name, **given) for runtime, run in runtimes.items()}
        for runtime, actual in results.items():
            for output in signature.outputs:
                check_rows(actual[output], rows, runtime, name, output)
                if signature.parity == "exact":
                    check_close(actual[output], expected[output], runtime, f"{name}/{output}")
        if signature.parity == "exact":
            parity["max_abs_diff"][name] = {
                runtime: max(float(np.max(np.abs(actual[k] - expected[k]))) for k in signature.outputs)
                for runtime, actual in results.items()
            }
        elif signature.parity == "estimate":
            for output in signature.outputs:  # "log_prob" for log_prob's, "anomaly_score/p_value" for a second output
                means = {"keras": float(np.mean(expected[output]))}
                means.update({runtime: float(np.mean(actual[output])) for runtime, actual in results.items()})
                parity["batch_mean"][name if output == signature.outputs[0] else f"{name}/{output}"] = means
    return parity


def check_close(actual, expected, runtime, what):
    """Raises unless `actual` is finite and, for float runtimes, within tolerance of Keras.

    `np.testing.assert_allclose` fails on NaN, which a hand-written `error > tol` would let pass.
    """
    try:
        np.testing.assert_array_equal(np.abs(actual) < _FLOAT32_MAX, True)
        if runtime in TOLERANCE:
            np.testing.assert_allclose(actual, expected, rtol=TOLERANCE[runtime], atol=TOLERANCE[runtime])
    except AssertionError as error:
        raise RuntimeError(f"export: {runtime} output {what} disagrees with Keras:{error}") from None
