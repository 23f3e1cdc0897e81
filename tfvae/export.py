"""Writes a trained VAE as a SavedModel and a TFLite model that need no tfvae, checked against Keras.

    manifest = tfvae.export.save(model, "export/digits", quantize="float16", sample_inputs=x_test)

The directory then holds `saved_model/` (for `tf.saved_model.load` and TF Serving), `model.tflite`
(for LiteRT), optionally a quantized `model_<mode>.tflite`, and `manifest.json`. Its signatures:

    encode(x) -> {z_mean, z_stddev}        serving_default is encode
    decode(z) -> {x_mean}                  reconstruct(x) -> {x_mean}
    sample(num_samples) -> {x_mean}        sample_seeded(num_samples, seed) -> {x_mean}
    elbo(x) -> {elbo}                      log_prob(x) -> {log_prob}   (nats per example)
    anomaly_score(x) -> {score, p_value}   with detector=: a calibrated tfvae.OutlierDetector

See export/README.md for calling them from Python, TF Serving's REST API and Android.
"""

import contextlib
import ctypes
import errno
import importlib.metadata
import json
import os
import re
import shutil
import sys
import tempfile
import uuid

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae import arguments, parity
from tfvae import signatures as signatures_lib
from tfvae.atomic import process_alive
from tfvae.model import VAE

QUANTIZE_MODES = ("dynamic", "float16")
EXPORT_FORMAT = "tfvae-export/1"
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # from <fcntl.h> and <linux/fs.h>


def save(
    model,
    directory=None,
    tflite=True,
    quantize=None,
    log_prob_samples=100,
    overwrite=False,
    sample_inputs=None,
    allow_untrained=False,
    sample_conditions=None,
    detector=None,
):
    """Exports `model` and returns the manifest (also written as `directory/manifest.json`).

    The export is written to a temporary sibling directory and renamed into place, so a crash
    never leaves a half-written export, and an old export is replaced only by a complete one.
    Before the rename every runtime is checked against Keras on a batch of inputs: a SavedModel
    or float TFLite model that disagrees (or returns NaN) raises, and nothing is written.

    Args:
        model: a trained `tfvae.VAE`.
        directory: where to write; None means `export/<model.name>` under the current directory.
        tflite: also write `model.tflite` (TFLite builtin ops only; runs on LiteRT).
        quantize: None, "dynamic" (int8 weights) or "float16": also write `model_<quantize>.tflite`.
        log_prob_samples: K, the importance samples behind the `log_prob` signature.
        overwrite: replace an existing `directory`; otherwise an existing one is refused.
        sample_inputs: real x (an array of shape (n, *input_shape)), e.g. the data the model was
            trained on. Its first 64, with rows at the edges of the likelihood's support (all 0, all
            1, binarized, large counts: those in its support), are the parity batch, checked against
            Keras; up to 2,048 rows run through every runtime, where any output that is NaN, inf
            or +-3.4e38 fails the export. None uses x ~ p(x|z), z ~ p(z) from the model itself; the
            manifest says which.
        allow_untrained: export a model whose weights are still at their initialization (no
            optimizer step ran and every bias is exactly zero); refused otherwise.
        sample_conditions: for a conditional model, the conditions of `sample_inputs` (one row per
            x), or of the model's own draws without them; None draws them uniformly in [0, 1).
        detector: a calibrated `tfvae.OutlierDetector` of `model`: adds the signature anomaly_score(x)
            -> {score, p_value}. Its method runs there if it is a function of one importance-sampling
            pass; otherwise the part of it that is (`OutlierDetector.exported`), which the manifest
            names under "anomaly_score".

    Returns:
        The manifest: shapes, likelihood, signatures, versions, file sizes and measured parity; None
        on a worker of a multi-worker strategy other than the chief, which writes the export alone.
    """
    _check_model(model, allow_untrained)
    exported = _exported_detector(detector, model)
    # Every worker checks the arguments, so a bad one fails the whole cluster, not only the chief.
    log_prob_samples = arguments.positive_int(log_prob_samples, "log_prob_samples")
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize: expected None or one of {list(QUANTIZE_MODES)}; got {quantize!r}.")
    if quantize is not None and not tflite:
        raise ValueError(f"quantize: {quantize!r} needs tflite=True.")
    if not model.distribute_strategy.extended.should_checkpoint:
        return None
    directory = os.path.abspath(directory if directory is not None else os.path.join("export", model.name))
    check_directory(directory, overwrite)
    x, inputs_source = parity.inputs(model, sample_inputs, sample_conditions)

    staging = _sibling(directory, "partial")
    os.mkdir(staging)
    try:
        manifest = _write(model, staging, tflite, quantize, log_prob_samples, x, detector, exported)
        manifest["parity"]["inputs"] = inputs_source
        with open(os.path.join(staging, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
        _move_into_place(staging, directory, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _exported_detector(detector, model):
    if detector is None:
        return None
    from tfvae.ood import OutlierDetector

    if not isinstance(detector, OutlierDetector):
        raise TypeError(f"detector: expected None or a tfvae.OutlierDetector; got {type(detector).__name__}.")
    if detector.model is not model:
        raise ValueError("detector: expected a detector of the model being exported; it scores with another model.")
    return detector.exported()


def _anomaly_score(detector, exported):
    """The manifest's account of the anomaly_score signature: what it computes and from what calibration."""
    from tfvae.ood import Combined, Complexity

    method = exported.method
    return {
        "method": method.name,
        **({"scores": list(method.scores)} if isinstance(method, Combined) else {}),
        **({"coder": method.coder_of(exported.model)} if isinstance(method, Complexity) else {}),
        "num_samples": method.num_samples,
        "calibration_size": int(len(exported.calibration_scores)),
        "detector_method": detector.method.name,
        **({"detector_scores": list(detector.method.scores)} if isinstance(detector.method, Combined) else {}),
    }


def _write(model, staging, tflite, quantize, log_prob_samples, x, detector=None, exported=None):
    module = signatures_lib.Signatures(model, log_prob_samples, exported)
    concrete = module.signatures()
    saved_model_dir = os.path.join(staging, "saved_model")
    tf.saved_model.save(module, saved_model_dir, signatures=concrete)

    runtimes = {"saved_model": parity.saved_model_runner(saved_model_dir)}
    files = {"saved_model": {"path": "saved_model", "bytes": _size(saved_model_dir)}}
    variants = ([None] if tflite else []) + ([quantize] if quantize else [])
    for mode in variants:
        key = "tflite" if mode is None else f"tflite_{mode}"
        path = os.path.join(staging, "model.tflite" if mode is None else f"model_{mode}.tflite")
        with open(path, "wb") as f:
            f.write(_convert(saved_model_dir, mode, list(module.table)))
        runtimes[key] = parity.tflite_runner(path)
        files[key] = {"path": os.path.basename(path), "bytes": os.path.getsize(path)}
    densities = _density_parity(model, x) if tflite else {}

    return {
        "format": EXPORT_FORMAT,
        "model_name": model.name,
        "input_shape": list(model.event_shape),
        "latent_dim": model.latent_dim,
        "likelihood": type(model.likelihood_head).__name__.lower(),
        "prior": type(model.prior_head).__name__,
        "posterior": type(model.posterior_head).__name__,
        "log_prob_samples": log_prob_samples,
        # What the log_prob signature estimates with: the Python API's refined proposal and AIS need
        # gradient steps per example, which the exported graphs do not take.
        "log_prob_estimator": {"method": "importance", "proposal": "encoder", "num_samples": log_prob_samples},
        **({"condition_shape": list(model.condition_shape)} if model.condition_shape is not None else {}),
        "signatures": _describe(concrete),
        "tflite_signatures": list(module.table) if tflite else [],
        **({"anomaly_score": _anomaly_score(detector, exported)} if detector is not None else {}),
        "files": files,
        "versions": _versions(),
        "parity": {**parity.check(module, x, runtimes, model.likelihood_head), **densities},
    }


def _density_parity(model, x):
    """The estimators' terms (`signatures_lib.Densities`) on LiteRT against TensorFlow, on every parity
    row with one fixed draw of the noise: {"densities": {"tflite": max |difference|, "rows": N}}.

    The `elbo` and `log_prob` signatures are Monte Carlo estimates, checked only for finite values row
    by row; this is where a likelihood whose log-density is wrong on device (but finite) is caught."""
    x, condition = x if isinstance(x, tuple) else (x, None)
    module = signatures_lib.Densities(model)
    concrete = module.concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with _native_stderr():
        runner = parity.tflite_model_runner(converter.convert())
    eps = np.random.default_rng(0).standard_normal((1, len(x), model.latent_dim)).astype(np.float32)
    largest = 0.0
    for start in range(0, len(x), parity.PARITY_BATCH):
        rows = slice(start, start + parity.PARITY_BATCH)
        inputs = {"x": x[rows], "eps": eps[:, rows], **({} if condition is None else {"condition": condition[rows]})}
        expected = {k: v.numpy() for k, v in concrete(**{k: tf.constant(v) for k, v in inputs.items()}).items()}
        actual = runner(**inputs)
        for name, value in expected.items():
            parity.check_rows(actual[name], len(x[rows]), "tflite", "densities", name)
            parity.check_close(actual[name], value, "tflite", f"the density {name}")
            largest = max(largest, float(np.max(np.abs(actual[name] - value))))
    return {"densities": {"tflite": largest, "rows": int(len(x))}}


def _check_model(model, allow_untrained):
    if not isinstance(model, VAE):
        raise TypeError(f"model: expected a tfvae.VAE; got {type(model).__name__}.")
    if not model.built or not model.variables:
        raise ValueError("model: expected a built tfvae.VAE with weights; this one has none. Build it first.")
    optimizer = getattr(model, "optimizer", None)
    stepped = optimizer is not None and int(optimizer.iterations.numpy()) > 0
    biases = [v for v in model.trainable_variables if v.name == "bias"]
    at_init = not stepped and all(not np.any(v.numpy()) for v in biases)
    if at_init and not allow_untrained:
        raise ValueError(
            "model: its weights are still at their initialization (no optimizer step has run and every "
            "bias is zero), so the export would encode and sample noise. Train it with model.fit (or load "
            "trained weights) first, or pass allow_untrained=True to export it anyway."
        )


def check_directory(directory, overwrite, argument="directory", flag="overwrite=True"):
    """Raises unless an export can be written as `directory`; creates its parent if needed.

    `overwrite` replaces only an earlier tfvae export, never a folder of anything else. Leftovers of
    exports of `directory` killed earlier are cleaned up first (see `_clean_leftovers`).

    Args:
        directory: the absolute path of the export.
        overwrite: whether an earlier export there may be replaced.
        argument, flag: how the caller names the two in messages; the CLI says "--out", "--overwrite".
    """
    _clean_leftovers(directory)
    if os.path.lexists(directory):
        if os.path.islink(directory):  # swapping would move the link, not the export it points to
            raise FileExistsError(f"{argument}: {directory!r} is a symbolic link; give the export's real path.")
        if not os.path.isdir(directory):
            raise FileExistsError(f"{argument}: {directory!r} exists and is not a directory.")
        if not overwrite:
            raise FileExistsError(
                f"{argument}: {directory!r} already exists; pass {flag} to replace it "
                f"(the old export is kept until the new one is complete)."
            )
        if not _is_export(directory):
            raise FileExistsError(
                f"{argument}: {directory!r} is not a tfvae export (no manifest.json with "
                f'"format": "{EXPORT_FORMAT}"); {flag} replaces only an earlier export. Choose another {argument}.'
            )
    parent = os.path.dirname(directory)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as error:
        raise type(error)(f"{argument}: cannot create the parent directory {parent!r}: {error}.") from error
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{argument}: cannot write an export into {parent!r}: permission denied.")


def _is_export(directory):
    """Whether `directory` holds an export written by `save` (its manifest.json says so)."""
    try:
        with open(os.path.join(directory, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == EXPORT_FORMAT


def _sibling(directory, role):
    """A fresh hidden path beside `directory`: renames within one file system are atomic.

    The name holds this process's id, so a later export can tell a dead writer's leftovers.
    """
    name = f".{os.path.basename(directory)}.{role}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return os.path.join(os.path.dirname(directory), name)


def _clean_leftovers(directory):
    """Removes the staging and old folders of exports of `directory` whose process is gone.

    Where renameat2 is missing, an export killed between its two renames leaves no `directory`, the
    old export in a `.old-` folder: that one is put back.
    """
    parent = os.path.dirname(directory)
    if not os.path.isdir(parent):
        return
    pattern = re.compile(rf"\.{re.escape(os.path.basename(directory))}\.(partial|old)-(\d+)-[0-9a-f]{{8}}")
    stale = []
    for name in os.listdir(parent):
        match = pattern.fullmatch(name)
        if match and not process_alive(int(match.group(2))):
            stale.append((match.group(1), os.path.join(parent, name)))
    olds = sorted((path for role, path in stale if role == "old"), key=os.path.getmtime)
    if olds and not os.path.lexists(directory):
        os.rename(olds[-1], directory)
    for _, path in stale:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)


def _move_into_place(staging, directory, overwrite):
    if not overwrite or not os.path.exists(directory):
        os.rename(staging, directory)
        return
    if not _is_export(directory):  # replaced by something else while the export was written
        raise FileExistsError(f"directory: {directory!r} is no longer a tfvae export; nothing was replaced.")
    # Swapped in one step, the path holds the old export or the new one at every moment.
    if _exchange(staging, directory):
        shutil.rmtree(staging, ignore_errors=True)
        return
    # Without the swap, a directory cannot be renamed over a non-empty one: move the old export
    # aside first, and back if the second rename fails (or on the next export, if killed between).
    old = _sibling(directory, "old")
    os.rename(directory, old)
    try:
        os.rename(staging, directory)
    except BaseException:
        os.rename(old, directory)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a, b):
    """Swaps the paths `a` and `b` atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # not Linux, or a C library older than glibc 2.28
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # an old kernel, or a file system without it
        return False
    raise OSError(error, f"cannot swap {a!r} and {b!r}: {os.strerror(error)}")


def _convert(saved_model_dir, quantize, signature_keys):
    """The TFLite flatbuffer, or a ValueError naming the TensorFlow ops TFLite has no builtin for.

    The converter does not always refuse such an op: for `Lgamma` (TFP's Poisson log_prob) it logs
    an error, folds the op into a constant of the wrong shape and returns a model that LiteRT cannot
    run. Its log is read for the ops it failed on, and what it wrote there is passed on.
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=signature_keys)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    with _native_stderr() as log:
        try:
            flatbuffer = converter.convert()
        except Exception as error:  # the converter's own refusal names the ops too
            log.append(str(error))
            flatbuffer = None
    text = "\n".join(log)
    missing = sorted(set(re.findall(r"TF Select ops: (.*)", text)) | set(re.findall(r'fused\["(\w+):".*error:', text)))
    if missing:
        raise ValueError(
            f"tflite: the model uses TensorFlow ops that TFLite has no builtin for ({', '.join(missing)}), "
            f"so it cannot run on LiteRT alone. Pass tflite=False to export the SavedModel only."
        )
    if flatbuffer is None:
        raise RuntimeError(f"tflite: the TFLite converter failed: {text[-2000:]}")
    return flatbuffer


@contextlib.contextmanager
def _native_stderr():
    """Collects what C++ code writes to file descriptor 2 in the block (a list of lines), then writes it on."""
    lines = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            written = capture.read().decode(errors="replace")
            sys.stderr.write(written)
            lines.extend(written.splitlines())


def _describe(concrete):
    def spec(s):
        return {"dtype": s.dtype.name, "shape": [-1 if d is None else d for d in s.shape.as_list()]}

    described = {}
    for name, function in concrete.items():
        inputs = function.structured_input_signature[0]
        outputs = function.structured_outputs
        described[name] = {
            "inputs": {s.name: spec(s) for s in inputs},
            "outputs": {k: spec(tf.TensorSpec(v.shape, v.dtype)) for k, v in sorted(outputs.items())},
        }
    return described


def _versions():
    import tfvae  # here, not at the top: tfvae/__init__.py may import this module

    versions = {
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tensorflow_probability": tfp.__version__,
        "tfvae": tfvae.__version__,
    }
    try:
        versions["ai_edge_litert"] = importlib.metadata.version("ai-edge-litert")
    except importlib.metadata.PackageNotFoundError:
        pass
    return versions


def _size(path):
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
