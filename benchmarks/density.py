"""Density benchmark: the Burda et al. (2015) one-stochastic-layer VAE, trained for a fixed epoch budget.

Architecture (from the authors' code, yburda/iwae): encoder D-200-200-(2x50), decoder 50-200-200-D,
tanh hidden units, diagonal Gaussian q(z|x), N(0, I) prior, Bernoulli p(x|z) whose output bias starts
at the logit of the mean training pixel. Training images are dynamically binarized (a fresh Bernoulli
draw every time an image is used); the test images are binarized once, with a fixed seed.
Adam(learning_rate, epsilon=1e-4) at a constant learning rate (Burda et al. decay it over 3,280 epochs).

Reported on the test set: NLL = -log p(x) by importance sampling with K = --eval-samples (5000, as in
the paper) with its standard error, bits/dim, the ELBO with its reconstruction and KL terms, active
units (Var_x E_q[z_u] > 0.01), and the amortization gap that `model.infer` closes.

    python benchmarks/density.py --epochs 10                                # VAE, K = 1
    python benchmarks/density.py --epochs 10 --objective iwae --num-samples 5

Prints one JSON object (also written to --output if given).
"""

import argparse
import json
import math
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfvae  # noqa: E402
from tfvae import data, evaluate, networks  # noqa: E402

HIDDEN = (200, 200)
# Keeps the initial output bias finite where a pixel is (nearly) always 0 or always 1.
_PIXEL_MEAN_FLOOR = 1e-3


def build_model(input_dim, latent_dim, objective, num_samples, seed):
    """The Burda et al. one-stochastic-layer VAE on flat inputs of size `input_dim`."""
    return tfvae.VAE(
        input_shape=(input_dim,),
        latent_dim=latent_dim,
        encoder=networks.MLP(HIDDEN, activation="tanh"),
        decoder=networks.MLP(HIDDEN, activation="tanh"),
        likelihood="bernoulli",
        prior="normal",
        posterior="diagonal",
        objective=objective,
        num_samples=num_samples,
        seed=seed,
    )


def set_output_bias(model, x_train):
    """Starts p(x|z) at the training pixels' marginal: bias = logit(mean pixel), as Burda et al. do."""
    mean = np.clip(x_train.mean(axis=0), _PIXEL_MEAN_FLOOR, 1.0 - _PIXEL_MEAN_FLOOR)
    model.likelihood_head.dense.bias.assign(np.log(mean / (1.0 - mean)).astype(np.float32))


def run(args):
    keras.utils.set_random_seed(args.seed)
    start = time.perf_counter()
    dataset = data.load(args.dataset, data_dir=args.data_dir)
    x_train = data.flatten(dataset.x_train)[: args.train_examples]
    x_test = data.binarize_static(data.flatten(dataset.x_test)[: args.test_examples], seed=args.seed)

    model = build_model(x_train.shape[1], args.latent_dim, args.objective, args.num_samples, args.seed)
    set_output_bias(model, x_train)
    model.compile(
        tfvae.training.Adam(args.learning_rate, epsilon=1e-4), steps_per_execution=args.steps_per_execution
    )
    train = data.make_dataset(x_train, args.batch_size, binarization="dynamic", seed=args.seed)
    train_start = time.perf_counter()
    history = model.fit(train, epochs=args.epochs, verbose=args.verbose, shuffle=False)  # make_dataset shuffles
    train_time = time.perf_counter() - train_start

    eval_start = time.perf_counter()
    result = evaluate.log_likelihood(
        model, x_test, num_samples=args.eval_samples, batch_size=args.eval_batch_size, verbose=args.verbose
    )
    eval_time = time.perf_counter() - eval_start
    active, variances = evaluate.active_units(model, x_test, return_variances=True)
    gap_start = time.perf_counter()
    gap = evaluate.amortization_gap(
        model,
        x_test[: args.gap_examples],
        steps=args.infer_steps,
        learning_rate=args.infer_learning_rate,
        num_samples=args.infer_samples,
        elbo_samples=args.gap_elbo_samples,
        seed=args.seed,
    )
    gap_time = time.perf_counter() - gap_start

    return {
        "benchmark": "density",
        "dataset": args.dataset,
        "architecture": f"{x_train.shape[1]}-{'-'.join(map(str, HIDDEN))}-{args.latent_dim} tanh, Bernoulli",
        "objective": args.objective,
        "train_num_samples": args.num_samples,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "train_examples": len(x_train),
        "test_examples": result["num_examples"],
        "eval_num_samples": result["num_samples"],
        "test_nll": -result["log_likelihood"],
        "test_nll_stderr": result["log_likelihood_stderr"],
        "bits_per_dim": result["bits_per_dim"],
        "test_elbo": result["elbo"],
        "test_reconstruction": result["reconstruction"],
        "test_kl": result["kl"],
        "test_gap": result["gap"],
        "final_train_loss": float(history.history["loss"][-1]),
        "active_units": active,
        "active_unit_threshold": 0.01,
        "latent_dim": args.latent_dim,
        "amortization": {
            "examples": gap["num_examples"],
            "infer_steps": gap["steps"],
            "infer_learning_rate": args.infer_learning_rate,
            "infer_num_samples": args.infer_samples,
            "elbo_samples": args.gap_elbo_samples,
            "amortized_elbo": gap["amortized_elbo"],
            "refined_elbo": gap["refined_elbo"],
            "gap_closed": gap["amortization_gap"],
            "gap_closed_stderr": gap["amortization_gap_stderr"],
            "seconds": gap_time,
        },
        "train_seconds": train_time,
        "train_examples_per_second": len(x_train) * args.epochs / train_time,
        "eval_seconds": eval_time,
        "wall_seconds": time.perf_counter() - start,
        "seed": args.seed,
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "tfvae": tfvae.__version__,
        },
    }


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion_mnist", help=f"one of {', '.join(data.DATASETS)} (default fashion_mnist)")
    parser.add_argument("--data-dir", default=None, help="directory with the idx files (default: tfvae.data's search)")
    parser.add_argument("--epochs", type=int, default=10, help="the epoch budget (default 10)")
    parser.add_argument("--objective", choices=sorted(tfvae.objectives.OBJECTIVES), default="elbo")
    parser.add_argument("--num-samples", type=int, default=1, help="K in the training objective (default 1)")
    parser.add_argument("--latent-dim", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--steps-per-execution", type=int, default=50, help="Keras steps per graph call (default 50)")
    parser.add_argument("--train-examples", type=int, default=None, help="first N training images (default all)")
    parser.add_argument("--test-examples", type=int, default=None, help="first N test images (default all)")
    parser.add_argument("--eval-samples", type=int, default=5000, help="K for the test log-likelihood (default 5000)")
    parser.add_argument("--eval-batch-size", type=int, default=100)
    parser.add_argument("--infer-steps", type=int, default=100, help="model.infer steps for the amortization gap")
    parser.add_argument("--infer-learning-rate", type=float, default=1e-2)
    parser.add_argument("--infer-samples", type=int, default=1, help="K per model.infer step (default 1)")
    parser.add_argument("--gap-examples", type=int, default=1000, help="test images for the amortization gap")
    parser.add_argument("--gap-elbo-samples", type=int, default=100, help="K in each ELBO of the gap (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2, help="Keras verbosity (default 2)")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    return parser


def parse_args(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    for name in ("epochs", "num_samples", "latent_dim", "batch_size", "steps_per_execution", "eval_samples",
                 "eval_batch_size", "infer_samples", "gap_examples", "gap_elbo_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an integer >= 1; got {getattr(args, name)}")
    for name in ("train_examples", "test_examples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an integer >= 1; got {getattr(args, name)}")
    if args.infer_steps < 0:
        parser.error(f"--infer-steps: expected an integer >= 0; got {args.infer_steps}")
    for name in ("learning_rate", "infer_learning_rate"):
        if not (getattr(args, name) > 0 and math.isfinite(getattr(args, name))):
            parser.error(f"--{name.replace('_', '-')}: expected a finite number > 0; got {getattr(args, name)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
