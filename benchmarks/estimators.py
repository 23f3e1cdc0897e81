"""How far to trust log p(x): importance sampling against annealed importance sampling, and where exact, quadrature.

Two setups:

- `--setup fashion`: a trained Fashion-MNIST model (`--model`, e.g. the 784-200-200-50 model that
  `benchmarks/density.py --setup burda` writes) on the first `--examples` test images, binarized once
  (seed 0, as density.py does). Each method estimates log p(x) per image: importance sampling with the
  encoder proposal and with the refined one (K = `--num-samples`), and AIS (`--ais-chains` chains of
  `--ais-steps` steps each; one entry per value of `--ais-steps`). BDMC on `--bdmc-examples` images drawn
  from the model bounds log p(x) from both sides at the largest step count.
- `--setup poisson`: the estimates issue's case, a likelihood head written outside tfvae
  (tfd.Independent(tfd.Poisson)) over the scikit-learn digits as counts, latent 2, 40 epochs; 60 test
  images held to log p(x) by quadrature (a 401 x 401 grid over [-8, 8]^2).

Each method's entry: the mean log p(x), seconds per example, the mean and maximum per-example standard
error, the minimum and median ESS, the share of examples with PSIS k-hat > 0.7 (and how many had too few
weights for a fit), and the share the reliability flag marks; the poisson setup
adds the mean absolute and signed error against quadrature and the k-hat share among examples more than
1 nat off. Entries are written to --work-dir as they finish: re-running the same command resumes.

    python benchmarks/estimators.py --setup poisson --output benchmarks/results/estimators-poisson.json
    python benchmarks/estimators.py --setup fashion --model RUN/checkpoint-00040.keras \\
        --output benchmarks/results/estimators-fashion.json
"""

import argparse
import json
import os
import platform
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from tfvae import data, evaluate  # noqa: E402

import common  # noqa: E402


def _parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--setup", choices=("fashion", "poisson"), default="poisson")
    parser.add_argument("--model", help="for --setup fashion: a .keras model of 784 binary pixels")
    parser.add_argument("--examples", type=int, default=100, help="fashion test images (default 100)")
    parser.add_argument("--num-samples", type=int, default=None, help="IS samples K (default fashion 5000, poisson 2000)")
    parser.add_argument("--ais-chains", type=int, default=None, help="AIS chains (default fashion 16, poisson 32)")
    parser.add_argument("--ais-steps", type=int, nargs="+", default=None,
                        help="AIS steps, one entry each (default fashion 1000, poisson 1000 3000)")
    parser.add_argument("--bdmc-examples", type=int, default=20, help="fashion: examples drawn for BDMC (0: none)")
    parser.add_argument("--batch-size", type=int, default=25, help="examples per estimator call (default 25)")
    parser.add_argument("--work-dir", default=None, help="finished entries, for resuming (default benchmarks/runs/estimators-SETUP)")
    parser.add_argument("--output", help="also write the JSON here (atomically)")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.setup == "fashion" and not args.model:
        _parser().error("--model: expected a .keras model for --setup fashion; got none")
    defaults = {"fashion": (5000, 16, [1000]), "poisson": (2000, 32, [1000, 3000])}[args.setup]
    args.num_samples = args.num_samples or defaults[0]
    args.ais_chains = args.ais_chains or defaults[1]
    args.ais_steps = args.ais_steps or defaults[2]
    work_dir = args.work_dir or os.path.join("benchmarks", "runs", f"estimators-{args.setup}")
    os.makedirs(work_dir, exist_ok=True)
    model, x, exact = _fashion(args) if args.setup == "fashion" else _poisson()
    entries = common.load_entries(work_dir)
    methods = [("importance-encoder", dict(num_samples=args.num_samples)),
               ("importance-refined", dict(num_samples=args.num_samples, proposal="refined"))]
    methods += [(f"ais-{steps}", dict(num_samples=args.ais_chains, method="ais", ais_steps=steps))
                for steps in args.ais_steps]
    for name, kwargs in methods:
        if name not in entries:
            entries[name] = _measure(model, x, exact, args.batch_size, kwargs)
            common.save_entries(work_dir, entries)
        print(name, json.dumps(entries[name]), flush=True)
    if args.setup == "fashion" and args.bdmc_examples and "bdmc" not in entries:
        start = time.perf_counter()
        bounds = evaluate.bdmc(model, args.bdmc_examples, args.ais_chains, max(args.ais_steps), seed=0)
        entries["bdmc"] = {"examples": args.bdmc_examples, "chains": args.ais_chains, "ais_steps": max(args.ais_steps),
                           "lower": float(bounds.lower.mean()), "upper": float(bounds.upper.mean()),
                           "gap": float(np.mean(bounds.upper - bounds.lower)),
                           "seconds": time.perf_counter() - start}
        common.save_entries(work_dir, entries)
    result = {"benchmark": "estimators", "setup": args.setup, "examples": len(x), "num_samples": args.num_samples,
              "ais_chains": args.ais_chains, "methods": entries,
              "command": "python " + shlex.join(["benchmarks/estimators.py", *(argv or sys.argv[1:])]),
              "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
              "versions": {"tensorflow": __import__("tensorflow").__version__, "keras": keras.__version__}}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        common.write_atomically(args.output, text + "\n")


def _fashion(args):
    model = keras.models.load_model(args.model)
    images, _ = data.load("fashion_mnist", split="test")
    return model, data.binarize_static(data.flatten(images)[: args.examples], seed=0), None


def _poisson():
    from test_custom_heads import poisson_counts_model

    return poisson_counts_model()


def _measure(model, x, exact, batch_size, kwargs):
    start = time.perf_counter()
    parts = [evaluate.log_prob_estimate(model, x[i : i + batch_size], seed=i, **kwargs)
             for i in range(0, len(x), batch_size)]
    seconds = time.perf_counter() - start
    estimate = evaluate.LogProbEstimate(*(np.concatenate(field) for field in zip(*parts)))
    entry = {**kwargs, "log_prob": float(estimate.log_prob.mean()),
             "seconds_per_example": seconds / len(x), "stderr_mean": float(np.nanmean(estimate.stderr)),
             "stderr_max": float(np.nanmax(estimate.stderr)), "ess_min": float(estimate.ess.min()),
             "ess_median": float(np.median(estimate.ess)),
             "pareto_k_above_0.7": float(np.mean(estimate.pareto_k > 0.7)),
             "pareto_k_not_fitted": int(np.sum(np.isnan(estimate.pareto_k))),
             "unreliable_fraction": float(np.mean(estimate.unreliable))}
    if exact is not None:
        error = estimate.log_prob - exact
        far = np.abs(error) > 1.0
        entry.update({"unreliable_among_over_1_nat": float(np.mean(estimate.unreliable[far])) if far.any() else None,
                      "unreliable_among_within_0.1_nat": float(np.mean(estimate.unreliable[np.abs(error) < 0.1])),
                      "error_mean_abs": float(np.abs(error).mean()), "error_mean": float(error.mean()),
                      "error_max_abs": float(np.abs(error).max()), "examples_over_1_nat": int(far.sum()),
                      "pareto_k_above_0.7_among_over_1_nat": float(np.mean(estimate.pareto_k[far] > 0.7)) if far.any() else None})
    return entry


if __name__ == "__main__":
    main()
