"""Shared plumbing for the throughput peers: data, command line, the JSON summary.

Kept free of torch and TensorFlow so either peer imports it without the other installed.
"""

import argparse
import gzip
import json
import os
import platform
import statistics

import numpy as np

FASHION_MNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
IDX_HEADER_BYTES = 16


def load_data(path=None, examples=10000, seed=0):
    """Returns `examples` rows of float32 [N, D] pixels in [0, 1].

    Args:
        path: a `.npy` array (any shape whose first axis is examples; uint8 is scaled by 1/255),
            or None for Fashion-MNIST's training images when on disk, else uniform noise.
        examples: how many rows to return (the first ones of the file).
        seed: seed of the uniform fallback.
    """
    if path is not None:
        x = np.load(path)
        if x.dtype == np.uint8:
            x = x / 255.0
    elif os.path.exists(FASHION_MNIST):
        with gzip.open(FASHION_MNIST, "rb") as f:
            raw = np.frombuffer(f.read(), dtype=np.uint8, offset=IDX_HEADER_BYTES)
        x = raw.reshape(-1, 784) / 255.0
    else:
        x = np.random.default_rng(seed).uniform(size=(examples, 784))
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    if len(x) < examples:
        raise ValueError(f"examples={examples} but the data has only {len(x)} rows")
    return x[:examples]


def check_x(x, batch_size):
    """Raises ValueError unless x is float [N, D] in [0, 1] with N >= batch_size >= 1."""
    x = np.asarray(x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x must be a float array [N, D], got dtype {x.dtype} shape {x.shape}")
    if batch_size < 1 or len(x) < batch_size:
        raise ValueError(f"batch_size must be in [1, {len(x)}] (the rows of x), got {batch_size}")
    if x.min() < 0.0 or x.max() > 1.0:
        raise ValueError(f"x must lie in [0, 1] (Bernoulli means), got [{x.min()}, {x.max()}]")
    return x.astype(np.float32, copy=False)


def make_parser(description, threads_default, threads_help):
    """The command line both peers share."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per repeat (default 3)")
    parser.add_argument("--warmup-epochs", type=int, default=1,
                        help="untimed epochs before them, per repeat (default 1)")
    parser.add_argument("--examples", type=int, default=10000, help="training rows (default 10000)")
    parser.add_argument("--batch-size", type=int, default=100, help="default 100")
    parser.add_argument("--repeats", type=int, default=3,
                        help="independent runs, fresh model each; the median is reported (default 3)")
    parser.add_argument("--threads", type=int, default=threads_default, help=threads_help)
    parser.add_argument("--data", default=None,
                        help=f".npy float array in [0, 1]; default {FASHION_MNIST} if present, else uniform noise")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def parse_args(parser, argv=None):
    """Parses and range-checks arguments, reporting errors through `parser.error`."""
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup_epochs < 0:
        parser.error(f"--warmup-epochs must be >= 0, got {args.warmup_epochs}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.examples < args.batch_size:
        parser.error(f"--examples ({args.examples}) must be >= --batch-size ({args.batch_size})")
    if args.data is not None and not os.path.exists(args.data):
        parser.error(f"--data: no such file: {args.data}")
    return args


def summarize(peer, runs, threads, versions, batch_size, epochs, warmup_epochs, examples):
    """The result dict: per-run figures plus their medians (machines are noisy)."""
    versions = {"python": platform.python_version(), "numpy": np.__version__, **versions}
    return {
        "peer": peer,
        "examples_per_second_median": statistics.median(r["examples_per_second"] for r in runs),
        "final_loss_median": statistics.median(r["final_loss"] for r in runs),
        "runs": runs,
        "threads": threads,
        "versions": versions,
        "batch_size": batch_size,
        "epochs": epochs,
        "warmup_epochs": warmup_epochs,
        "examples": examples,
    }


def print_json(result):
    print(json.dumps(result, indent=2))
