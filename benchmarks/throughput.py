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

Prints one JSON object on stdout (progress goes to stderr).
"""

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
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
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))  # the repo, for tfvae when it is not installed
sys.path.insert(0, os.path.join(_HERE, "peers"))

import evaluation_speed  # noqa: E402
import keras_io_vae  # noqa: E402
import torch_vae  # noqa: E402

import tfvae  # noqa: E402
from tfvae import data  # noqa: E402

LATENT_DIM = 50
HIDDEN = (200, 200)
INFERENCE_BATCHES = (1, 256)


def training_flops_per_example(input_dim=784, hidden=HIDDEN, latent_dim=LATENT_DIM):
    """FLOPs of one example's forward and backward GEMMs: 3 GEMMs per dense layer, 2 FLOPs per MAC.

    Forward y = xW; backward dx = dy W^T and dW = x^T dy cost the same MACs each. Elementwise work
    (activations, the loss, Adam) is left out: it is small next to the GEMMs.
    """
    encoder = [input_dim, *hidden, 2 * latent_dim]
    decoder = [latent_dim, *hidden, input_dim]
    macs = sum(a * b for widths in (encoder, decoder) for a, b in zip(widths[:-1], widths[1:]))
    return 3 * 2 * macs


def _gemm_shapes(batch_size, input_dim=784, hidden=HIDDEN, latent_dim=LATENT_DIM):
    encoder = [input_dim, *hidden, 2 * latent_dim]
    decoder = [latent_dim, *hidden, input_dim]
    return [(batch_size, a, b) for widths in (encoder, decoder) for a, b in zip(widths[:-1], widths[1:])]


# ---------------------------------------------------------------------------------------------
# Training


class _InStepBinarizationVAE(tfvae.VAE):
    """tfvae's VAE binarizing each batch inside train_step (a lever: tf.data does it by default)."""

    def train_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        x = tf.cast(keras.random.uniform(tf.shape(x), seed=self.seed_generator) < x, tf.float32)
        return super().train_step(x)


class _TFNormalVAE(tfvae.VAE):
    """tfvae's VAE drawing eps with TF's normal kernel (a lever: tfvae.noise draws it by default)."""

    def noise(self, num_samples, batch_size):
        return keras.random.normal((num_samples, batch_size, self.latent_dim), seed=self.seed_generator)


def _autotuned():
    """tf.data's default, which tfvae.data.make_dataset turns off (a lever)."""
    options = tf.data.Options()
    options.autotune.enabled = True
    return options


def train_tfvae(x, epochs, batch_size, warmup_epochs, seed, variant="defaults"):
    """Trains a fresh tfvae VAE with `model.fit` and returns its throughput.

    `variant` "defaults" is what a user gets from `model.fit(dataset)`; the others switch off one
    default each (see `LEVERS`).
    """
    keras.utils.set_random_seed(seed)
    model_class = {"binarize_in_train_step": _InStepBinarizationVAE, "tf_normal": _TFNormalVAE}.get(variant, tfvae.VAE)
    model = model_class(input_shape=(x.shape[1],), latent_dim=LATENT_DIM)
    if variant == "steps_per_execution=1":
        model.compile(steps_per_execution=1)
    elif variant == "jit_compile=True":
        model.compile(jit_compile=True)
    elif variant == "keras_adam":
        model.compile(optimizer=keras.optimizers.Adam())  # Keras's own update, not tfvae.training.Adam's fused one
    binarization = None if variant == "binarize_in_train_step" else "dynamic"
    dataset = data.make_dataset(x, batch_size, binarization=binarization, seed=seed)
    fit_kwargs = {}
    if variant in ("arrays", "keras_array_adapter"):
        # What most users write: one binarized array and a batch size.
        dataset, fit_kwargs = data.binarize_static(x, seed=seed), {"batch_size": batch_size}
    if variant == "prefetch_autotune":
        dataset = dataset.prefetch(tf.data.AUTOTUNE).with_options(_autotuned())
    timer = keras_io_vae.EpochTimer()
    fit = model.fit
    if variant in ("no_nan_check", "keras_array_adapter"):
        # Keras's own fit: tfvae's fit adds the input checks, the RestoreOnNaN callback, its progress
        # bar and, for arrays, make_dataset's pipeline instead of Keras's array adapter.
        model.compile()
        fit = lambda *a, **k: keras.Model.fit(model, *a, **k)  # noqa: E731
    verbose = 1 if variant == "progress_bar" else 0
    with contextlib.redirect_stdout(sys.stderr):  # a progress bar must not mix with the JSON
        fit(dataset, epochs=warmup_epochs + epochs, verbose=verbose, callbacks=[timer], **fit_kwargs)
    timed = timer.seconds[warmup_epochs:]
    return {
        "examples_per_second": len(x) * epochs / sum(timed),
        "final_loss": timer.losses[-1],
        "epoch_seconds": timed,
    }, model


def _peer_once(peer, x, args, seed):
    if peer == "torch":
        result = torch_vae.run(x, args.epochs, args.batch_size, args.warmup_epochs, repeats=1,
                               threads=args.torch_threads, seed=seed)
    else:
        result = keras_io_vae.run(x, args.epochs, args.batch_size, args.warmup_epochs, repeats=1, seed=seed)
    return result["runs"][0], result["versions"]


def _summary(runs, flops_per_example):
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


def _torch_available():
    try:
        import torch  # noqa: F401
    except ImportError as e:
        return f"torch is not installed ({e}); install the bench extra: pip install -e \".[bench]\""
    return None


def benchmark_training(x, args, log):
    """Every contender trains once per round, in a rotating order; returns per-contender summaries."""
    flops = training_flops_per_example(x.shape[1])
    # tfvae twice: fit on make_dataset's pipeline, and fit(x, batch_size=...) on an array.
    contenders, skipped, versions = ["tfvae", "tfvae_arrays"], {}, {}
    for peer in args.peers:
        reason = _torch_available() if peer == "torch" else None
        if reason:
            skipped[peer] = reason
        else:
            contenders.append(peer)
    runs = {name: [] for name in contenders}
    for round_ in range(args.repeats):
        shift = round_ % len(contenders)
        for name in contenders[shift:] + contenders[:shift]:
            seed = args.seed + round_
            if name == "tfvae_arrays":
                run, _ = train_tfvae(x, args.epochs, args.batch_size, args.warmup_epochs, seed, "arrays")
            elif name == "tfvae":
                run, model = train_tfvae(x, args.epochs, args.batch_size, args.warmup_epochs, seed)
                defaults = {
                    "steps_per_execution": int(model.steps_per_execution),
                    "jit_compile": bool(model.jit_compile),
                    "dtype_policy": model.dtype_policy.name,
                }
            else:
                run, versions[name] = _peer_once(name, x, args, seed)
            runs[name].append(run)
            log(f"round {round_ + 1}/{args.repeats} {name}: {run['examples_per_second']:.0f} examples/s")
    result = {name: _summary(r, flops) for name, r in runs.items()}
    result["tfvae"]["defaults"] = defaults
    for name, reason in skipped.items():
        result[name] = {"skipped": reason}
    ratios, per_round = {}, {}
    for ours in ("tfvae", "tfvae_arrays"):
        rates = [r["examples_per_second"] for r in runs[ours]]
        for name in contenders:
            if name.startswith("tfvae"):
                continue
            key = f"{ours}_vs_{name}"
            ratios[key] = result[ours]["examples_per_second_median"] / result[name]["examples_per_second_median"]
            per_round[key] = statistics.median(t / r["examples_per_second"] for t, r in zip(rates, runs[name]))
    ratios["tfvae_arrays_vs_tfvae"] = (result["tfvae_arrays"]["examples_per_second_median"]
                                       / result["tfvae"]["examples_per_second_median"])
    return {
        "model": "784-200-200-50 tanh MLP VAE (Burda et al. 2015), diagonal Gaussian q, N(0, I) prior, "
                 "Bernoulli p(x|z), Adam 1e-3, dynamic binarization",
        "batch_size": args.batch_size,
        "examples": len(x),
        "epochs": args.epochs,
        "warmup_epochs": args.warmup_epochs,
        "repeats": args.repeats,
        "flops_per_example": flops,
        "contenders": result,
        "ratios": ratios,
        "ratios_per_round_median": per_round,
        "peer_versions": versions,
    }


LEVERS = ("defaults", "steps_per_execution=1", "keras_adam", "jit_compile=True", "no_nan_check",
          "binarize_in_train_step", "tf_normal", "prefetch_autotune", "progress_bar", "keras_array_adapter")


def benchmark_levers(x, args, log):
    """tfvae with each default switched off alone (or a rejected option switched on), interleaved."""
    runs = {lever: [] for lever in LEVERS}
    for round_ in range(args.repeats):
        shift = round_ % len(LEVERS)
        for lever in LEVERS[shift:] + LEVERS[:shift]:
            run, _ = train_tfvae(x, args.epochs, args.batch_size, args.warmup_epochs, args.seed + round_, lever)
            runs[lever].append(run)
            log(f"levers round {round_ + 1}/{args.repeats} {lever}: {run['examples_per_second']:.0f} examples/s")
    flops = training_flops_per_example(x.shape[1])
    result = {lever: _summary(r, flops) for lever, r in runs.items()}
    base = result["defaults"]["examples_per_second_median"]
    for lever in LEVERS:
        result[lever]["relative_to_defaults"] = result[lever]["examples_per_second_median"] / base
    return {
        "description": {
            "defaults": "tfvae as shipped",
            "steps_per_execution=1": "compile(steps_per_execution=1): one host round trip per batch",
            "keras_adam": "Keras's Adam update (about 12 ops per variable) instead of the fused ResourceApplyAdam",
            "jit_compile=True": "compile(jit_compile=True): the train step compiled by XLA",
            "no_nan_check": "keras.Model.fit without tfvae's RestoreOnNaN callback (per-execution loss read)",
            "binarize_in_train_step": "dynamic binarization drawn inside train_step instead of in tf.data",
            "tf_normal": "eps drawn by TF's normal kernel (keras.random.normal) instead of tfvae.noise",
            "prefetch_autotune": "make_dataset(...).prefetch(AUTOTUNE) with tf.data's autotuner on (tf.data's usual "
                                 "advice) instead of a pipeline that runs on the thread asking for the batch",
            "progress_bar": "verbose=1 (to stderr) instead of verbose=0",
            "keras_array_adapter": "keras.Model.fit on a binarized array (Keras's array adapter) instead of "
                                   "make_dataset's dynamic binarization; compare with tfvae_arrays of the main run",
        },
        "results": result,
    }


# ---------------------------------------------------------------------------------------------
# Matmul peak


def _time_per_call(fn, seconds, repeats=5):
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


def _gemm_loop(shapes, dtype, iterations):
    """A tf.function running the forward and both backward GEMMs of every layer `iterations` times.

    A graph loop, as training runs them: no Python per iteration.
    """
    rng = np.random.default_rng(0)
    tensors = [[tf.constant(rng.standard_normal(s).astype(np.float32), dtype=dtype)
                for s in ((b, i), (i, o), (b, o))] for b, i, o in shapes]

    @tf.function
    def loop():
        # Each iteration's results feed a loop variable (one element each, a negligible cost), so
        # no GEMM is pruned or hoisted out of the loop as invariant.
        def body(step, total):
            outputs = []
            for x, w, dy in tensors:
                outputs += [tf.matmul(x, w), tf.matmul(dy, w, transpose_b=True), tf.matmul(x, dy, transpose_a=True)]
            return step + 1, total + tf.cast(tf.add_n([o[0, 0] for o in outputs]), tf.float32)

        return tf.while_loop(lambda step, _: step < iterations, body, [tf.constant(0), tf.constant(0.0)])[1]

    return loop


def benchmark_peak(batch_size, seconds, flops_per_example, bf16):
    """GFLOP/s of the model's own GEMMs (a graph loop of forward + backward shapes) and of a square GEMM."""
    shapes = _gemm_shapes(batch_size)
    step_flops = sum(3 * 2 * b * i * o for b, i, o in shapes)
    result = {}
    dtypes = [("float32", tf.float32)] + ([("bfloat16", tf.bfloat16)] if bf16 else [])
    for name, dtype in dtypes:
        iterations = 50
        seconds_per_loop = _time_per_call(_gemm_loop(shapes, dtype, iterations), seconds)
        gflops = step_flops * iterations / seconds_per_loop / 1e9
        result[f"model_gemms_{name}"] = {
            "gflops": gflops,
            "examples_per_second_limit": gflops * 1e9 / flops_per_example,
            "shapes": [list(s) for s in shapes],
        }
        n = 2048
        a = tf.cast(tf.random.stateless_normal((n, n), seed=[0, 0]), dtype)
        square = tf.function(lambda: tf.matmul(a, a))
        result[f"square_{n}_{name}"] = {"gflops": 2 * n**3 / _time_per_call(square, seconds) / 1e9}
    return result


# ---------------------------------------------------------------------------------------------
# Inference


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
                latency = _time_per_call(lambda: fn(xb), seconds)
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


# ---------------------------------------------------------------------------------------------
# Command-line start-up

CLI_TARGET_SECONDS = 1.0  # `tfvae --help` and an argument error, wall time


def _tfvae(*args):
    """`python -m tfvae ARGS` with this checkout's tfvae, and TF_CPP_MIN_LOG_LEVEL as a user has it: unset."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(_HERE), env.get("PYTHONPATH")]))
    return [sys.executable, "-m", "tfvae", *args], env


def _time_command(args, status, cwd):
    """Wall seconds of one process running `tfvae ARGS` and its lines on stdout and stderr; checks its exit status."""
    argv, env = _tfvae(*args)
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    if done.returncode != status:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}, not {status}: {done.stderr[-2000:]}")
    return seconds, len(done.stdout.splitlines()), len(done.stderr.splitlines())


def benchmark_cli_startup(runs, log):
    """Median wall time of `tfvae --help`, an argument error, a mistyped run directory and `tfvae sample RUN -n 1`,
    `runs` processes each.

    The run to sample from is trained first (digits, one epoch), untimed. The commands take turns, so
    a noisy neighbour slows all of them alike. The output lines of each command's last process are
    counted too: a quiet `sample` prints one line and nothing on stderr.
    """
    commands = {
        "help": (["--help"], 0),
        "argument_error": (["train", "--epochs", "0"], 2),
        "mistyped_run": (["sample", "RNU", "-n", "1", "-o", "sample.png"], 2),
        "sample": (["sample", "RUN", "-n", "1", "-o", "sample.png", "--seed", "0"], 0),
    }
    with tempfile.TemporaryDirectory(prefix="tfvae-cli-") as tmp:
        _time_command(["train", "--dataset", "digits", "--epochs", "1", "--latent-dim", "2", "--batch-size", "100",
                       "--out", "RUN"], 0, tmp)
        times, lines = {name: [] for name in commands}, {}
        for round_ in range(runs):
            for name, (args, status) in commands.items():
                seconds, stdout_lines, stderr_lines = _time_command(args, status, tmp)
                lines[name] = stdout_lines, stderr_lines
                times[name].append(seconds)
                log(f"cli start-up round {round_ + 1}/{runs} {name}: {seconds:.2f} s")
    result = {
        name: {"command": " ".join(["tfvae", *args]), "seconds_median": statistics.median(times[name]),
               "seconds_min": min(times[name]), "seconds_max": max(times[name]), "runs": times[name],
               "stdout_lines": lines[name][0], "stderr_lines": lines[name][1]}
        for name, (args, _) in commands.items()
    }
    return {"how": "python -m tfvae in a fresh process, wall time, TF_CPP_MIN_LOG_LEVEL unset", "commands": result}


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


def cli_startup_targets(cli_startup):
    """`--help` and argument errors (a bad flag, a mistyped run) within CLI_TARGET_SECONDS: met at or below it."""
    targets = {}
    for name in ("help", "argument_error", "mistyped_run"):
        seconds = cli_startup["commands"][name]["seconds_median"]
        targets[f"cli_{name}_seconds"] = {"target": CLI_TARGET_SECONDS, "measured": seconds,
                                          "met": seconds <= CLI_TARGET_SECONDS}
    return targets


# ---------------------------------------------------------------------------------------------


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


def _write_atomically(path, text):
    path = os.path.abspath(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_test_x(args):
    """The first `evaluation_examples` Fashion-MNIST test images binarized once (seed args.seed), or binary noise."""
    rng = np.random.default_rng(args.seed)
    if args.synthetic:
        return (rng.uniform(size=(args.evaluation_examples, 784)) < 0.5).astype(np.float32)
    images, _ = data.load("fashion_mnist", split="test")
    x = data.flatten(images[: args.evaluation_examples]).astype(np.float32)
    return (rng.uniform(size=x.shape) < x).astype(np.float32)


def benchmark_evaluation(x, args, log):
    """The "evaluation" section: a model trained one epoch on x, then `evaluation_speed`'s timing."""
    keras.utils.set_random_seed(args.seed)
    model = tfvae.VAE(input_shape=(x.shape[1],), latent_dim=LATENT_DIM)
    with contextlib.redirect_stdout(sys.stderr):
        model.fit(data.make_dataset(x, args.batch_size, binarization="dynamic", seed=args.seed), epochs=1, verbose=0)
    torch_threads = args.torch_threads if "torch" in args.peers and _torch_available() is None else None
    flags = machine_info()["flags"]
    bf16 = flags["avx512_bf16"] or flags["amx_bf16"]
    return evaluation_speed.benchmark_evaluation(
        model, x, load_test_x(args), args.evaluation_samples, args.evaluation_rounds, torch_threads, bf16,
        max(args.inference_seconds, 0.05), _time_per_call, HIDDEN, log)


def run(args, log=lambda message: None):
    """The whole benchmark as a JSON-ready dict."""
    start = time.perf_counter()
    if args.cli_startup_only:
        machine = machine_info()
        cli_startup = benchmark_cli_startup(args.cli_startup_runs, log)
        machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        return {"benchmark": "tfvae command start-up",
                "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:]),
                "settings": {k: v for k, v in vars(args).items() if k != "out"}, "machine": machine,
                "cli_startup": cli_startup, "targets": cli_startup_targets(cli_startup),
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
    training = benchmark_training(x, args, log)
    result["training"] = training
    flops = training["flops_per_example"]
    if not args.no_peak:
        bf16 = machine["flags"]["avx512_bf16"] or machine["flags"]["amx_bf16"]
        peak = benchmark_peak(args.batch_size, max(args.inference_seconds, 0.05), flops, bf16)
        achieved = training["contenders"]["tfvae"]["gflops_achieved_median"]
        peak["tfvae_fraction_of_model_gemm_peak_float32"] = achieved / peak["model_gemms_float32"]["gflops"]
        result["matmul_peak"] = peak
    if args.levers:
        result["levers"] = benchmark_levers(x, args, log)
    if not args.no_inference:
        keras.utils.set_random_seed(args.seed)
        model = tfvae.VAE(input_shape=(x.shape[1],), latent_dim=LATENT_DIM)
        with contextlib.redirect_stdout(sys.stderr):
            model.fit(data.make_dataset(x, args.batch_size, binarization="dynamic", seed=args.seed),
                      epochs=1, verbose=0)
        result["inference"] = benchmark_inference(model, x, args.inference_seconds, log)
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
        result["cli_startup"] = benchmark_cli_startup(args.cli_startup_runs, log)
        targets.update(cli_startup_targets(result["cli_startup"]))
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
        _write_atomically(args.out, text + "\n")
    print(text)


if __name__ == "__main__":
    main()
