"""What the benchmarks share: the benchmark's model and data, timing, the machine, atomic writes, resumable entries.

Used by `throughput.py` and the benchmark files it runs (training_speed, matmul_peak, inference_speed,
cli_startup, evaluation_speed), and by the resumable ones (estimators, ood); defined once here.
"""

import json
import os
import platform
import statistics
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import tfvae
from tfvae import data

# The Burda et al. (2015) one-stochastic-layer model: 784-200-200-50, tanh.
LATENT_DIM = 50
HIDDEN = (200, 200)


def training_flops_per_example(input_dim=784, hidden=HIDDEN, latent_dim=LATENT_DIM):
    """FLOPs of one example's forward and backward GEMMs: 3 GEMMs per dense layer, 2 FLOPs per MAC.

    Forward y = xW; backward dx = dy W^T and dW = x^T dy cost the same MACs each. Elementwise work
    (activations, the loss, Adam) is left out: it is small next to the GEMMs.
    """
    encoder = [input_dim, *hidden, 2 * latent_dim]
    decoder = [latent_dim, *hidden, input_dim]
    macs = sum(a * b for widths in (encoder, decoder) for a, b in zip(widths[:-1], widths[1:]))
    return 3 * 2 * macs


def two_layer_training_flops_per_example(input_dim=784, hidden=HIDDEN, latent_dim=LATENT_DIM):
    """`training_flops_per_example` of latent_dim=(d, d): the encoder to q(z2|x), q(z1|x, z2) on [h, z2],
    p(z1|z2) on z2 (each an MLP of `hidden`), and the decoder on [z1, z2]."""
    stacks = [[input_dim, *hidden, 2 * latent_dim], [hidden[-1] + latent_dim, *hidden, 2 * latent_dim],
              [latent_dim, *hidden, 2 * latent_dim], [2 * latent_dim, *hidden, input_dim]]
    return 3 * 2 * sum(a * b for widths in stacks for a, b in zip(widths[:-1], widths[1:]))


def gemm_shapes(batch_size, input_dim=784, hidden=HIDDEN, latent_dim=LATENT_DIM):
    encoder = [input_dim, *hidden, 2 * latent_dim]
    decoder = [latent_dim, *hidden, input_dim]
    return [(batch_size, a, b) for widths in (encoder, decoder) for a, b in zip(widths[:-1], widths[1:])]


def time_per_call(fn, seconds, repeats=5):
    """Median seconds per call of `fn` over `repeats` timed blocks of about `seconds` each."""
    fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < max(seconds / 10, 1e-3) or calls < 2:
        fn()
        calls += 1
    per_call = (time.perf_counter() - start) / calls
    calls = max(1, int(seconds / per_call))
    blocks = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        blocks.append((time.perf_counter() - start) / calls)
    return statistics.median(blocks)


def summary(runs, flops_per_example):
    rates = [r["examples_per_second"] for r in runs]
    median = statistics.median(rates)
    return {
        "examples_per_second_median": median,
        "examples_per_second_min": min(rates),
        "examples_per_second_max": max(rates),
        "gflops_achieved_median": median * flops_per_example / 1e9,
        "final_loss_median": statistics.median(r["final_loss"] for r in runs),
        "runs": runs,
    }


def torch_available():
    try:
        import torch  # noqa: F401 (only whether it imports)
    except ImportError as e:
        return f"torch is not installed ({e}); install the bench extra: pip install -e \".[bench]\""
    return None


def machine_info():
    flags = set()
    model_name = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("model name"):
                    model_name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": model_name,
        "cpus": cpus,
        "flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")},
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "keras": keras.__version__, "tfvae": tfvae.__version__, "numpy": np.__version__},
    }


def load_x(args):
    """Fashion-MNIST's first `examples` training images flattened to 784 in [0, 1], or uniform noise."""
    if args.synthetic:
        return np.random.default_rng(args.seed).uniform(size=(args.examples, 784)).astype(np.float32)
    images, _ = data.load("fashion_mnist", split="train")
    return data.flatten(images[: args.examples]).astype(np.float32)


def load_test_x(args):
    """The first `evaluation_examples` Fashion-MNIST test images binarized once (seed args.seed), or binary noise."""
    rng = np.random.default_rng(args.seed)
    if args.synthetic:
        return (rng.uniform(size=(args.evaluation_examples, 784)) < 0.5).astype(np.float32)
    images, _ = data.load("fashion_mnist", split="test")
    x = data.flatten(images[: args.evaluation_examples]).astype(np.float32)
    return (rng.uniform(size=x.shape) < x).astype(np.float32)


def write_atomically(path, text):
    path = os.path.abspath(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_entries(work_dir):
    """The figures a resumable benchmark measured so far: {name: entry} from work_dir/entries.json."""
    path = os.path.join(work_dir, "entries.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_entries(work_dir, entries):
    write_atomically(os.path.join(work_dir, "entries.json"), json.dumps(entries, indent=2) + "\n")
