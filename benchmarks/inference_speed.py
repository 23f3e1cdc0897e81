"""Latency and throughput of `encode` at batch 1 and 256 through Keras (eager and compiled), the exported
SavedModel and the TFLite model on LiteRT. Part of `throughput.py` ("inference")."""

import contextlib
import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

from common import time_per_call

INFERENCE_BATCHES = (1, 256)


def _encode_callers(model, export_dir, log):
    """{path: function(x) -> (z_mean, z_stddev) as numpy}, each the way a user calls that path."""

    def keras_eager(x):
        q = model.encode(x)
        return q.mean().numpy(), q.stddev().numpy()

    @tf.function(input_signature=[tf.TensorSpec((None, *model.event_shape), tf.float32)])
    def compiled(x):
        q = model.encode(x)
        return q.mean(), q.stddev()

    def keras_compiled(x):
        z_mean, z_stddev = compiled(x)
        return z_mean.numpy(), z_stddev.numpy()

    callers = {"keras_eager": keras_eager, "keras_compiled": keras_compiled}
    notes = {
        "keras_eager": "q = model.encode(x); q.mean().numpy(), q.stddev().numpy() (eager, input checks included)",
        "keras_compiled": "tf.function(x -> model.encode(x).mean(), .stddev()) traced once for [None, 784]",
    }
    try:
        from tfvae import export
    except ImportError as e:
        return callers, notes, {"saved_model": f"tfvae.export is missing ({e})", "tflite": "ditto"}

    try:
        with contextlib.redirect_stdout(sys.stderr):
            manifest = export.save(model, export_dir, tflite=True, overwrite=True)
    except Exception as e:  # a broken export must not lose the training results
        reason = f"tfvae.export.save failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        log(reason)
        return callers, notes, {"saved_model": reason, "tflite": reason}
    files = manifest["files"]
    encode = tf.saved_model.load(os.path.join(export_dir, files["saved_model"]["path"])).signatures["encode"]

    def saved_model(x):
        out = encode(x=tf.constant(x))
        return out["z_mean"].numpy(), out["z_stddev"].numpy()

    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=os.path.join(export_dir, files["tflite"]["path"])).get_signature_runner("encode")

    def tflite(x):
        out = runner(x=x)
        return out["z_mean"], out["z_stddev"]

    callers.update(saved_model=saved_model, tflite=tflite)
    notes["saved_model"] = "tf.saved_model.load(dir/saved_model).signatures['encode'](x=tf.constant(x))"
    notes["tflite"] = "ai_edge_litert Interpreter(dir/model.tflite).get_signature_runner('encode')(x=x)"
    log(f"exported to {export_dir}")
    return callers, notes, {}


def benchmark_inference(model, x, seconds, log):
    """Latency and throughput of encode at each batch size, through every path."""
    with tempfile.TemporaryDirectory(prefix="tfvae-throughput-") as tmp:
        callers, notes, skipped = _encode_callers(model, os.path.join(tmp, "export"), log)
        result = {}
        for batch in INFERENCE_BATCHES:
            xb = np.ascontiguousarray(x[np.arange(batch) % len(x)], dtype=np.float32)
            expected = callers["keras_eager"](xb)
            rows = {}
            for path, fn in callers.items():
                got = fn(xb)
                np.testing.assert_allclose(got[0], expected[0], rtol=1e-3, atol=1e-4, err_msg=path)
                latency = time_per_call(lambda: fn(xb), seconds)
                rows[path] = {"latency_ms_median": latency * 1e3, "examples_per_second": batch / latency}
                log(f"encode batch {batch} {path}: {latency * 1e3:.3f} ms")
            result[f"batch_{batch}"] = rows
    ratios = {}
    for batch in INFERENCE_BATCHES:
        rows = result[f"batch_{batch}"]
        if "tflite" in rows:
            for base in ("keras_eager", "keras_compiled"):
                ratios[f"tflite_vs_{base}_batch_{batch}"] = (rows[base]["latency_ms_median"]
                                                            / rows["tflite"]["latency_ms_median"])
    return {"signature": "encode(x) -> {z_mean, z_stddev}", "paths": notes, "skipped": skipped,
            "encode": result, "speedups": ratios}
