"""Training throughput (examples/s) against the global batch size: one device, MirroredStrategy, and
MultiWorkerMirroredStrategy with local worker processes.

The model is the throughput benchmark's (784-200-200-50 MLP VAE, Bernoulli p(x|z), Adam), trained
with `fit` on `tfvae.data.make_dataset` batches of random binary images, so no dataset is needed.
Every measurement runs in fresh processes: a MirroredStrategy needs the logical CPUs configured before
TensorFlow starts, and each MultiWorkerMirroredStrategy worker is a process of its own (started by
`tfvae.launch`, on localhost ports). Each measurement trains one untimed epoch (tracing, the first
collectives) and then `--epochs` timed ones of `--steps` global batches.

    python benchmarks/distribute.py --out distribute.json       # the full grid, some minutes
    python benchmarks/distribute.py --quick                     # seconds: checks that it runs

Prints one JSON object on stdout (progress goes to stderr): per strategy and global batch size the
examples/s, and each one's ratio to one device at the same global batch.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

STRATEGIES = ("one_device", "mirrored", "multi_worker")


def _parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--batch-sizes", default="100,400,1600,6400",
                        help="global batch sizes, comma-separated (default 100,400,1600,6400)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"comma-separated, of {', '.join(STRATEGIES)} (default all)")
    parser.add_argument("--replicas", type=int, default=2,
                        help="logical CPUs of the MirroredStrategy, and workers of the multi-worker one (default 2)")
    parser.add_argument("--steps", type=int, default=20, help="global batches per timed epoch (default 20)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs; the median is reported (default 3)")
    parser.add_argument("--input-dim", type=int, default=784, help="D of the random binary images (default 784)")
    parser.add_argument("--quick", action="store_true", help="batch 100, 2 steps, 1 epoch: checks that it runs")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--measure", nargs=2, metavar=("STRATEGY", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser


def _positive_ints(parser, text, flag):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        parser.error(f"{flag}: expected positive integers separated by commas; got {text!r}")
    return values


def measure(strategy_name, batch_size, args):
    """examples/s of `fit` under the strategy (run inside the process that trains)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if strategy_name == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.replicas)
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(args.replicas)])
    elif strategy_name == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    import keras
    import numpy as np

    import tfvae

    keras.utils.set_random_seed(0)
    x = (np.random.default_rng(0).random((batch_size * args.steps, args.input_dim)) < 0.3).astype(np.float32)
    with strategy.scope():
        model = tfvae.VAE(input_shape=(args.input_dim,), latent_dim=50)
        model.compile()
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    data = tfvae.data.make_dataset(x, batch_size, seed=0)
    model.fit(data, epochs=1 + args.epochs, verbose=0, callbacks=[Timer()])
    timed = sorted(times[1:])
    return {"examples_per_s": batch_size * args.steps / timed[len(timed) // 2],
            "replicas": strategy.num_replicas_in_sync, "epoch_seconds": timed}


def _run_measurement(strategy_name, batch_size, args):
    """The measurement in fresh processes: one, or `--replicas` workers of a local cluster."""
    common = ["--steps", str(args.steps), "--epochs", str(args.epochs), "--input-dim", str(args.input_dim),
              "--replicas", str(args.replicas)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        command = [sys.executable, os.path.abspath(__file__), "--measure", strategy_name, str(batch_size),
                   "--result", result, *common]
        if strategy_name == "multi_worker":
            from tfvae import launch

            workers = launch.start(command, args.replicas, logs=tmp, env=env)
            codes = [worker.wait() for worker in workers]
            logs = [open(os.path.join(tmp, f"worker-{i}.log"), encoding="utf-8").read() for i in range(len(workers))]
        else:
            completed = subprocess.run(command, env=env, capture_output=True, text=True)
            codes, logs = [completed.returncode], [completed.stdout + completed.stderr]
        if any(codes):
            raise RuntimeError(f"{strategy_name} at batch {batch_size} failed:\n{logs[codes.index(max(codes))][-3000:]}")
        with open(result, encoding="utf-8") as f:
            return json.load(f)


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.measure is not None:
        strategy_name, batch_size = args.measure[0], int(args.measure[1])
        measured = measure(strategy_name, batch_size, args)
        if strategy_name != "multi_worker" or _is_chief():
            with open(args.result, "w", encoding="utf-8") as f:
                json.dump(measured, f)
        return 0
    for flag, value in (("--steps", args.steps), ("--epochs", args.epochs), ("--replicas", args.replicas),
                        ("--input-dim", args.input_dim)):
        if value < 1:
            parser.error(f"{flag}: expected an integer >= 1; got {value}")
    batch_sizes = _positive_ints(parser, args.batch_sizes, "--batch-sizes")
    strategies = args.strategies.split(",")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        parser.error(f"--strategies: expected some of {', '.join(STRATEGIES)}; got {', '.join(unknown)}")
    if args.quick:
        batch_sizes, args.steps, args.epochs = [100], 2, 1
    results = []
    for batch_size in batch_sizes:
        for strategy_name in strategies:
            print(f"{strategy_name}, global batch {batch_size} ...", file=sys.stderr, flush=True)
            measured = _run_measurement(strategy_name, batch_size, args)
            results.append({"strategy": strategy_name, "global_batch": batch_size, **measured})
    one_device = {r["global_batch"]: r["examples_per_s"] for r in results if r["strategy"] == "one_device"}
    for r in results:
        if r["global_batch"] in one_device:
            r["vs_one_device"] = r["examples_per_s"] / one_device[r["global_batch"]]
    report = {
        "benchmark": "distribute",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "settings": {"steps": args.steps, "epochs": args.epochs, "input_dim": args.input_dim,
                     "replicas": args.replicas, "model": "MLP VAE 784-200-200-50 (tfvae.VAE defaults)"},
        "results": results,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)
    return 0


def _is_chief():
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    return task["type"] == "chief" or (task["type"] == "worker" and task["index"] == 0)


if __name__ == "__main__":
    sys.exit(main())
