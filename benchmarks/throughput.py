"""Training and inference throughput of tfvae, against plain PyTorch and a keras.io-style Keras VAE.

Training: the Burda et al. (2015) one-stochastic-layer VAE (784-200-200-50, tanh, diagonal Gaussian
q(z|x), N(0, I) prior, Bernoulli p(x|z), Adam 1e-3, batch 100) on dynamically binarized
Fashion-MNIST, trained the way a user trains it:

    model = tfvae.VAE(input_shape=(784,), latent_dim=50)
    model.fit(tfvae.data.make_dataset(x, 100, binarization="dynamic"), epochs=...)

with tfvae's defaults (no compile call, no knobs). The peers (benchmarks/peers) train the same
model: plain PyTorch (torch CPU, 2 threads; optional, `pip install -e ".[bench]"`) and a keras.io-style
custom train_step. Contenders take turns within each repeat (the order rotates), so a noisy
neighbour slows all of them alike; medians over repeats and the ratios between them are reported.

Also measured: the matmul peak of this machine (the model's own forward and backward GEMM shapes at
this batch size, and a large square GEMM) against the GFLOP/s that training achieves; and the
latency and throughput of `encode` at batch 1 and batch 256 through Keras (eager and compiled),
the exported SavedModel and the TFLite model on LiteRT. `--levers` measures each of tfvae's
performance defaults by switching it off alone. And the start-up of the `tfvae` command: `--help`,
an argument error and `tfvae sample RUN -n 1`, each in fresh processes (`--no-cli-startup` skips it).

    python benchmarks/throughput.py --out throughput.json        # the full run, several minutes
    python benchmarks/throughput.py --quick                      # seconds: checks that it runs

Prints one JSON object on stdout (progress goes to stderr). Each section is one benchmark file, run from
here: training_speed.py (and its levers), matmul_peak.py, inference_speed.py, evaluation_speed.py,
cli_startup.py; common.py holds what they share (the model's sizes, the data, timing, the machine).
"""

import argparse
import contextlib
import json
import math
import os
import sys
import time

# ---------------------------------------------------------------------------------------------
# Command line: parsed before TensorFlow is imported, so --help and argument errors answer at once.

TARGETS = {"vs_torch": 1.3, "vs_keras_io": 1.5, "tflite_vs_keras_batch_1": 5.0}
# Issue 16: importance-sampled log p(x) at least 5x the PyTorch peer and 60% of the float32 GEMM limit;
# the bfloat16 option within 0.05 nats of float32.
EVALUATION_TARGETS = {"vs_torch": 5.0, "fraction_of_gemm_limit": 0.6, "bfloat16_error_nats": 0.05}


def _parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--epochs", type=int, default=10,
                        help="timed epochs per repeat (default 10: per-epoch costs show in long runs)")
    parser.add_argument("--warmup-epochs", type=int, default=1,
                        help="untimed epochs first in every repeat, tracing included (default 1)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="rounds; each contender trains a fresh model once per round (default 5)")
    parser.add_argument("--examples", type=int, default=20000,
                        help="training examples, the first of Fashion-MNIST's train split (default 20000)")
    parser.add_argument("--batch-size", type=int, default=100, help="examples per step (default 100)")
    parser.add_argument("--synthetic", action="store_true",
                        help="uniform random pixels instead of Fashion-MNIST (same shape)")
    parser.add_argument("--peers", default="torch,keras_io",
                        help="comma-separated peers to train against: torch, keras_io, or none "
                             "(default torch,keras_io; torch is skipped with a note when not installed)")
    parser.add_argument("--torch-threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--inference-seconds", type=float, default=1.0,
                        help="timed seconds per inference measurement and repeat (default 1.0)")
    parser.add_argument("--no-inference", action="store_true", help="skip the encode latency benchmark")
    parser.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement")
    parser.add_argument("--no-evaluation", action="store_true",
                        help="skip the importance-sampled log p(x) benchmark (tfvae against the PyTorch peer)")
    parser.add_argument("--evaluation-only", action="store_true",
                        help="run only that benchmark (a few minutes): a model trained one epoch, then the timing")
    parser.add_argument("--evaluation-samples", type=int, default=1000, help="K of the evaluation (default 1000)")
    parser.add_argument("--evaluation-examples", type=int, default=1000,
                        help="test images the evaluation scores (default 1000)")
    parser.add_argument("--evaluation-rounds", type=int, default=3,
                        help="timed rounds of the evaluation; each contender runs once per round (default 3)")
    parser.add_argument("--no-cli-startup", action="store_true", help="skip timing the tfvae command's start-up")
    parser.add_argument("--cli-startup-only", action="store_true",
                        help="time only the tfvae command's start-up (a minute or two), nothing else")
    parser.add_argument("--cli-startup-runs", type=int, default=5,
                        help="processes timed per command in the start-up measurement (default 5)")
    parser.add_argument("--levers", action="store_true",
                        help="also train tfvae with each performance default switched off, one at a time")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings that only check the benchmark runs: synthetic data, 300 examples, "
                             "1 epoch, 1 repeat, short inference timing (explicit arguments still win)")
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="TF's intra-op thread pool size for the whole run; 0 keeps TF's default "
                             "(one per core). Measures the thread lever of docs/speed.md")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, models and noise (default 0)")
    parser.add_argument("--out", default=None, help="also write the JSON to this file (atomically)")
    return parser


QUICK = {"epochs": 1, "warmup_epochs": 1, "repeats": 1, "examples": 300, "inference_seconds": 0.05,
         "cli_startup_runs": 1, "evaluation_samples": 10, "evaluation_examples": 20, "evaluation_rounds": 1}


def parse_args(argv=None):
    """Parses the command line; out-of-range values exit with status 2 and name the argument."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")}
        for name, value in QUICK.items():
            if "--" + name.replace("_", "-") not in given:
                setattr(args, name, value)
        args.synthetic = True
    for name in ("epochs", "repeats", "batch_size", "examples", "torch_threads", "evaluation_samples",
                 "evaluation_examples", "evaluation_rounds"):
        value = getattr(args, name)
        if value < 1:
            parser.error(f"argument --{name.replace('_', '-')}: expected an integer >= 1; got {value}")
    if args.cli_startup_runs < 1:
        parser.error(f"argument --cli-startup-runs: expected an integer >= 1; got {args.cli_startup_runs}")
    if args.cli_startup_only and args.no_cli_startup:
        parser.error("argument --cli-startup-only: not allowed with --no-cli-startup")
    if args.evaluation_only and (args.no_evaluation or args.cli_startup_only):
        parser.error("argument --evaluation-only: not allowed with --no-evaluation or --cli-startup-only")
    if not args.synthetic and args.evaluation_examples > 10000:
        parser.error(f"argument --evaluation-examples: Fashion-MNIST has 10000 test images; got {args.evaluation_examples}")
    if args.intra_op_threads < 0:
        parser.error(f"argument --intra-op-threads: expected an integer >= 0; got {args.intra_op_threads}")
    if args.warmup_epochs < 0:
        parser.error(f"argument --warmup-epochs: expected an integer >= 0; got {args.warmup_epochs}")
    if args.examples < args.batch_size:
        parser.error(f"argument --examples: expected at least --batch-size ({args.batch_size}) examples; "
                     f"got {args.examples}")
    if not args.synthetic and args.examples > 60000:
        parser.error(f"argument --examples: Fashion-MNIST has 60000 training examples; got {args.examples} "
                     "(use --synthetic for more)")
    if not (math.isfinite(args.inference_seconds) and args.inference_seconds > 0):
        parser.error(f"argument --inference-seconds: expected a number > 0; got {args.inference_seconds}")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if peers == ["none"]:
        peers = []
    unknown = sorted(set(peers) - {"torch", "keras_io"})
    if unknown:
        parser.error(f"argument --peers: expected a comma-separated subset of torch,keras_io, or none; "
                     f"got {', '.join(unknown)}")
    args.peers = peers
    if args.out is not None:
        parent = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(parent):
            parser.error(f"argument --out: no such directory {parent}")
    return args


if __name__ == "__main__":
    _ARGS = parse_args()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))  # the repo, for tfvae when it is not installed
sys.path.insert(0, os.path.join(_HERE, "peers"))

import cli_startup  # noqa: E402
import evaluation_speed  # noqa: E402
import inference_speed  # noqa: E402
import matmul_peak  # noqa: E402
import training_speed  # noqa: E402
from common import (HIDDEN, LATENT_DIM, load_test_x, load_x, machine_info, time_per_call,  # noqa: E402
                    torch_available, write_atomically)

import tfvae  # noqa: E402
from tfvae import data  # noqa: E402


def evaluation_targets(evaluation):
    """Issue 16's evaluation targets: speed against the peer and the GEMM limit, bfloat16's error in nats."""
    contenders, targets = evaluation["contenders"], {}
    if "tfvae_log_prob_vs_torch" in evaluation["ratios"]:
        targets["evaluation_vs_torch"] = {"target": EVALUATION_TARGETS["vs_torch"],
                                          "measured": evaluation["ratios"]["tfvae_log_prob_vs_torch"]}
    targets["evaluation_fraction_of_gemm_limit"] = {
        "target": EVALUATION_TARGETS["fraction_of_gemm_limit"],
        "measured": contenders["tfvae_log_prob"]["fraction_of_float32_gemm_limit"]}
    for target in targets.values():
        target["met"] = target["measured"] >= target["target"]
    if "bfloat16_error_nats" in evaluation:
        error = abs(evaluation["bfloat16_error_nats"]["mean_difference"])
        targets["evaluation_bfloat16_error_nats"] = {"target": EVALUATION_TARGETS["bfloat16_error_nats"],
                                                     "measured": error,
                                                     "met": error <= EVALUATION_TARGETS["bfloat16_error_nats"]}
    return targets


def benchmark_evaluation(x, args, log):
    """The "evaluation" section: a model trained one epoch on x, then `evaluation_speed`'s timing."""
    keras.utils.set_random_seed(args.seed)
    model = tfvae.VAE(input_shape=(x.shape[1],), latent_dim=LATENT_DIM)
    with contextlib.redirect_stdout(sys.stderr):
        model.fit(data.make_dataset(x, args.batch_size, binarization="dynamic", seed=args.seed), epochs=1, verbose=0)
    torch_threads = args.torch_threads if "torch" in args.peers and torch_available() is None else None
    flags = machine_info()["flags"]
    bf16 = flags["avx512_bf16"] or flags["amx_bf16"]
    return evaluation_speed.benchmark_evaluation(
        model, x, load_test_x(args), args.evaluation_samples, args.evaluation_rounds, torch_threads, bf16,
        max(args.inference_seconds, 0.05), time_per_call, HIDDEN, log)


def run(args, log=lambda message: None):
    """The whole benchmark as a JSON-ready dict."""
    start = time.perf_counter()
    if args.cli_startup_only:
        machine = machine_info()
        startup = cli_startup.benchmark_cli_startup(args.cli_startup_runs, log)
        machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        return {"benchmark": "tfvae command start-up",
                "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:]),
                "settings": {k: v for k, v in vars(args).items() if k != "out"}, "machine": machine,
                "cli_startup": startup, "targets": cli_startup.cli_startup_targets(startup),
                "seconds": time.perf_counter() - start}
    x = load_x(args)
    machine = machine_info()
    result = {
        "benchmark": "tfvae throughput",
        "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:]),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "data": "synthetic uniform [0, 1]" if args.synthetic else "fashion_mnist (train split, first examples)",
        "machine": machine,
    }
    if args.evaluation_only:
        result["evaluation"] = benchmark_evaluation(x, args, log)
        result["targets"] = evaluation_targets(result["evaluation"])
        machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        result["seconds"] = time.perf_counter() - start
        return result
    training = training_speed.benchmark_training(x, args, log)
    result["training"] = training
    flops = training["flops_per_example"]
    if not args.no_peak:
        bf16 = machine["flags"]["avx512_bf16"] or machine["flags"]["amx_bf16"]
        peak = matmul_peak.benchmark_peak(args.batch_size, max(args.inference_seconds, 0.05), flops, bf16)
        achieved = training["contenders"]["tfvae"]["gflops_achieved_median"]
        peak["tfvae_fraction_of_model_gemm_peak_float32"] = achieved / peak["model_gemms_float32"]["gflops"]
        result["matmul_peak"] = peak
    if args.levers:
        result["levers"] = training_speed.benchmark_levers(x, args, log)
    if not args.no_inference:
        keras.utils.set_random_seed(args.seed)
        model = tfvae.VAE(input_shape=(x.shape[1],), latent_dim=LATENT_DIM)
        with contextlib.redirect_stdout(sys.stderr):
            model.fit(data.make_dataset(x, args.batch_size, binarization="dynamic", seed=args.seed),
                      epochs=1, verbose=0)
        result["inference"] = inference_speed.benchmark_inference(model, x, args.inference_seconds, log)
    if not args.no_evaluation:
        result["evaluation"] = benchmark_evaluation(x, args, log)
    targets = {}
    ratios = training["ratios"]
    if "tfvae_vs_torch" in ratios:
        targets["training_vs_torch"] = {"target": TARGETS["vs_torch"], "measured": ratios["tfvae_vs_torch"]}
    if "tfvae_vs_keras_io" in ratios:
        targets["training_vs_keras_io"] = {"target": TARGETS["vs_keras_io"], "measured": ratios["tfvae_vs_keras_io"]}
    speedups = result.get("inference", {}).get("speedups", {})
    if "tflite_vs_keras_eager_batch_1" in speedups:
        targets["tflite_vs_keras_eager_batch_1"] = {"target": TARGETS["tflite_vs_keras_batch_1"],
                                                    "measured": speedups["tflite_vs_keras_eager_batch_1"]}
    for target in targets.values():
        target["met"] = target["measured"] >= target["target"]
    if "evaluation" in result:
        targets.update(evaluation_targets(result["evaluation"]))
    if not args.no_cli_startup:
        result["cli_startup"] = cli_startup.benchmark_cli_startup(args.cli_startup_runs, log)
        targets.update(cli_startup.cli_startup_targets(result["cli_startup"]))
    result["targets"] = targets
    machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["seconds"] = time.perf_counter() - start
    return result


def main(argv=None):
    args = parse_args(argv) if argv is not None or __name__ != "__main__" else _ARGS

    def log(message):
        print(f"[throughput] {message}", file=sys.stderr, flush=True)

    if args.intra_op_threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
        except RuntimeError as e:  # TF's pools exist once an op has run in this process
            raise SystemExit(f"--intra-op-threads: TensorFlow is already initialized in this process ({e})")
    result = run(args, log)
    text = json.dumps(result, indent=2, allow_nan=False)
    if args.out is not None:
        write_atomically(args.out, text + "\n")
    print(text)


if __name__ == "__main__":
    main()
