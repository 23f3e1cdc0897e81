"""Speed of log p(z) under a mixture prior: tfvae's one-GEMM form against TFP's MixtureSameFamily.

The work is the VampPrior's share of importance-sampled evaluation: log p(x) with K samples for N
binarized Fashion-MNIST test images under the Exemplar VAE setup's model (gated MLPs of 300 units,
latent 40, 500 pseudo-inputs). Two contenders, on the same model and the same noise:

- `gemm`: `model.log_prob(x, K)` as tfvae runs it, log p(z) = logsumexp_c of one [N, 2D] x [2D, C]
  matrix product (`tfvae.heads.GaussianMixture`);
- `tfp_broadcast`: the same graph with log p(z) in TFP's `MixtureSameFamily` form, which broadcasts
  every z against every component ([N, C, D] elements): the peer, what the prior was before.

Each runs once per round in alternating order; medians are reported with their ratio and the mean
difference of the two estimates (float32 rounding of the GEMM form). Prints one JSON object.

    python benchmarks/mixture_prior.py --out mixture_prior.json
    python benchmarks/mixture_prior.py --quick     # seconds: checks that it runs
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from unittest import mock

import numpy as np
import tensorflow as tf
from tensorflow_probability import distributions as tfd

import tfvae
from tfvae import atomic, data, objectives


def _parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--examples", type=int, default=200, help="test images N (default 200)")
    parser.add_argument("--num-samples", type=int, default=1000, help="importance samples K (default 1000)")
    parser.add_argument("--components", type=int, default=500, help="pseudo-inputs C (default 500)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; medians are reported (default 3)")
    parser.add_argument("--quick", action="store_true", help="N = 10, K = 20, 1 round: checks that it runs")
    parser.add_argument("--out", help="also write the JSON here (atomically)")
    return parser


def _test_images(examples, seed=0):
    images, _ = data.load("fashion_mnist", split="test")
    x = data.flatten(images[:examples]).astype(np.float32)
    return (np.random.default_rng(seed).uniform(size=x.shape) < x).astype(np.float32)


def _log_prob_function(model, num_samples):
    """log p(x) in a fresh graph, traced with whatever GaussianMixture._log_prob is at the time."""
    return tf.function(lambda x: objectives.importance_sampled(model, x, num_samples, model.noise)["log_prob"],
                       autograph=False)


def run(args, log=lambda message: None):
    if args.quick:
        args.examples, args.num_samples, args.rounds = 10, 20, 1
    model = tfvae.VAE(input_shape=(784,), latent_dim=40, encoder="gated_mlp", decoder="gated_mlp",
                      prior=tfvae.heads.VampPrior(40, (784,), num_components=args.components), seed=0)
    x = tf.constant(_test_images(args.examples))
    contenders = {"gemm": _log_prob_function(model, args.num_samples)}
    with mock.patch.object(tfvae.heads.GaussianMixture, "_log_prob", tfd.MixtureSameFamily._log_prob):
        contenders["tfp_broadcast"] = _log_prob_function(model, args.num_samples)
        contenders["tfp_broadcast"].get_concrete_function(x)  # traced here, with TFP's form
    estimates, times = {}, {name: [] for name in contenders}
    state = model.seed_generator.state.numpy()
    for name, function in contenders.items():  # untimed: tracing; the estimates, on the same noise
        model.seed_generator.state.assign(state)
        estimates[name] = function(x).numpy().astype(np.float64)
    for round_ in range(args.rounds):
        names = list(contenders) if round_ % 2 == 0 else list(contenders)[::-1]
        for name in names:
            start = time.perf_counter()
            contenders[name](x).numpy()
            times[name].append(time.perf_counter() - start)
            log(f"round {round_ + 1}/{args.rounds} {name}: {times[name][-1]:.2f} s")
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    difference = estimates["gemm"] - estimates["tfp_broadcast"]
    return {
        "benchmark": "tfvae mixture prior log p(z)",
        "command": "python benchmarks/mixture_prior.py " + " ".join(sys.argv[1:]),
        "what": f"model.log_prob(x, K = {args.num_samples}) for {args.examples} binarized Fashion-MNIST test images, "
                f"VampPrior of {args.components} pseudo-inputs over gated MLPs (784-300-300-40)",
        "contenders": {name: {"seconds_median": medians[name], "seconds": times[name]} for name in contenders},
        "ratio_tfp_broadcast_vs_gemm": medians["tfp_broadcast"] / medians["gemm"],
        "estimate_difference_nats": {"mean": float(difference.mean()), "max_abs": float(np.abs(difference).max()),
                                     "mean_log_prob": float(estimates["tfp_broadcast"].mean())},
        "load_average_at_end": list(os.getloadavg()),
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__, "tfvae": tfvae.__version__},
    }


def _parse(argv):
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("examples", "num_samples", "components", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an integer >= 1; got {getattr(args, name)}")
    if args.examples > 10000:
        parser.error(f"--examples: expected at most 10000 (the Fashion-MNIST test images); got {args.examples}")
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        parser.error(f"--out: expected a file in an existing directory; got {args.out!r}")
    return args


def main(argv=None):
    args = _parse(argv)
    result = run(args, log=lambda message: print(message, file=sys.stderr, flush=True))
    text = json.dumps(result, indent=2, allow_nan=False)
    print(text)
    if args.out:
        with atomic.atomic_path(args.out) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
