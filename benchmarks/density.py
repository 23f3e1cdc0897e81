"""Density benchmark: a VAE on dynamically binarized images, in one of two published setups.

`--setup burda` (the default): the Burda et al. (2015) one-stochastic-layer VAE (yburda/iwae): encoder
D-200-200-(2x50), decoder 50-200-200-D, tanh units, Adam(1e-3, epsilon=1e-4) at a constant learning
rate, a fixed epoch budget on all the training images, no validation.

`--setup exemplar-vae`: the MLP models of the Exemplar VAE paper (Norouzi et al. 2020, sajadn/Exemplar-VAE):
Fashion-MNIST, the first 50,000 training images for training and the last 10,000 for validation (the
authors load with use_fixed_validation=True: no shuffle before the split); encoder and decoder 2 gated
layers of 300 units, latent 40; Adam(5e-4), batch 100; the KL weight rising linearly over the first
--warmup-epochs (100: 1/100 in the first epoch, 1 from the 100th); up to --epochs (2000) with early
stopping on the validation ELBO (patience 50; as in the authors' code, epochs before the KL weight
reaches 1 do not count towards it) and the best epoch's weights restored. `--prior vamp` is their
VampPrior (500 pseudo-inputs). `--latent-dim 40,40` is their 2-level HVAE, and `--architecture conv` puts
tfvae's convolutional encoder and decoder (`tfvae.VAE(encoder="conv", decoder="conv")`) on the 28x28 images.

Both: Bernoulli p(x|z) whose output bias starts at the logit of the mean training pixel (`--no-bias-init`
leaves it at 0); training images binarized afresh every time they are used, validation and test images
once with fixed seeds (seed + 1 and seed). Reported on the test set: NLL = -log p(x) by importance
sampling with K = --eval-samples (5000, as both papers) with its standard error, bits/dim, the ELBO with
its reconstruction and KL terms, active units (Var_x E_q[z_u] > 0.01), and the test ELBO that
`model.infer` gains (the amortization gap it closes).

The run lives in --run-dir (default benchmarks/runs/<setup>-<prior>-<objective>...): after every epoch
a checkpoint (the model with its optimizer state), the history, the early-stopping and learning-rate
plateau state and the best weights, written so that a kill at any moment leaves the last completed
epoch intact. Re-running the same command continues from there; a finished run is evaluated again.

    python benchmarks/density.py --epochs 10                                      # Burda VAE, K = 1
    python benchmarks/density.py --setup exemplar-vae --prior vamp --output benchmarks/results/vamp.json

Prints one JSON object (also written to --output if given, and to the run directory) and draws the
learning curve (train and validation ELBO per epoch) to <run-dir>/learning_curve.png.
"""

import argparse
import glob
import json
import math
import os
import platform
import re
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfvae  # noqa: E402
from tfvae import atomic, callbacks, data, heads, evaluate, networks  # noqa: E402

# Setup-dependent defaults; a flag given on the command line overrides its entry.
SETUPS = {
    "burda": {
        "dataset": "fashion_mnist", "body": "mlp", "hidden": (200, 200), "latent_dim": 50, "learning_rate": 1e-3,
        "adam_epsilon": 1e-4, "epochs": 10, "validation_examples": 0, "warmup_epochs": 0, "patience": None,
    },
    "exemplar-vae": {
        # epsilon: the authors' AdamNormGrad keeps PyTorch's 1e-8.
        "dataset": "fashion_mnist", "body": "gated_mlp", "hidden": (300, 300), "latent_dim": 40,
        "learning_rate": 5e-4, "adam_epsilon": 1e-8, "epochs": 2000, "validation_examples": 10000,
        "warmup_epochs": 100, "patience": 50,
    },
}
LR_SCHEDULES = ("constant", "cosine", "plateau")
# Keeps the initial output bias finite where a pixel is (nearly) always 0 or always 1.
_PIXEL_MEAN_FLOOR = 1e-3
STATE = "state.json"
CURVE = "learning_curve.png"
RESULT = "result.json"
# Settings a run keeps for its whole life: resuming with another value would train a different model.
RUN_SETTINGS = ("setup", "architecture", "dataset", "prior", "objective", "num_samples", "latent_dim", "batch_size",
                "learning_rate", "lr_schedule", "plateau_patience", "warmup_epochs", "bias_init", "train_examples",
                "validation_examples", "seed", "posterior_log_variance_range", "he_init", "inference")
# Settings added after runs were started with this script: such a run's state lacks them and had these values.
SETTING_DEFAULTS = {"posterior_log_variance_range": None, "he_init": False, "architecture": "mlp",
                    "inference": "top_down"}


class UsageError(Exception):
    """A command-line mistake found after parsing; main() reports it as argparse does (exit 2)."""


def build_model(setup, event_shape, latent_dim, prior, objective, num_samples, seed, log_variance_range=None,
                inference="top_down"):
    """The setup's VAE on inputs of shape `event_shape`, with one stochastic layer (an int `latent_dim`)
    or a hierarchy (a list, bottom first: the HVAE of Tomczak & Welling 2018, every layer's network the
    setup's MLP); each Gaussian layer's scale by softplus, or by a log-variance clipped to
    `log_variance_range` (the VampPrior authors' Hardtanh(-6, 2), on every layer of their HVAE too).
    Images (height, width, channels) get tfvae's convolutional encoder and decoder (`--architecture conv`,
    toward the ConvHVAE rows); a hierarchy's layers keep the setup's MLP, as `tfvae.VAE(encoder="conv")` does.
    A hierarchy's q is the HVAE's (`inference="top_down"`) or the ladder VAE's (`"ladder"`)."""
    spec = SETUPS[setup]
    event_shape = tuple(event_shape)

    def body():
        if spec["body"] == "gated_mlp":
            return networks.GatedMLP(spec["hidden"])
        return networks.MLP(spec["hidden"], activation="tanh")

    convolutional = len(event_shape) == 3
    dims = [latent_dim] if isinstance(latent_dim, int) else list(latent_dim)
    gaussians = [heads.DiagonalGaussian(d, log_variance_range=log_variance_range) for d in dims]
    posterior, prior_head = gaussians[0], prior  # "vamp": 500 pseudo-inputs, the VampPrior paper's and the Exemplar VAE's
    if len(dims) > 1:
        posterior = heads.HierarchicalPosterior(dims, [body() for _ in dims[1:]], layer=gaussians, direction=inference)
        prior_head = heads.HierarchicalPrior(dims, [body() for _ in dims[1:]], top=prior, event_shape=event_shape,
                                             layer=[heads.DiagonalGaussian(d, log_variance_range=log_variance_range)
                                                    for d in dims[:-1]])
    return tfvae.VAE(
        input_shape=event_shape,
        latent_dim=latent_dim,
        encoder="conv" if convolutional else body(),
        decoder="conv" if convolutional else body(),
        likelihood="bernoulli",
        prior=prior_head,
        posterior=posterior,
        objective=objective,
        num_samples=num_samples,
        seed=seed,
    )


def set_output_bias(model, x_train):
    """Starts p(x|z) at the training pixels' marginal: bias = logit(mean pixel), as Burda et al. do; a
    convolutional decoder's head shares its bias over the positions, so it starts at their mean."""
    bias = model.likelihood_head.dense.bias
    mean = x_train.mean(axis=0).reshape(-1, bias.shape[0]).mean(axis=0)
    mean = np.clip(mean, _PIXEL_MEAN_FLOOR, 1.0 - _PIXEL_MEAN_FLOOR)
    bias.assign(np.log(mean / (1.0 - mean)).astype(np.float32))


def he_init(model, seed):
    """Draws every dense kernel from N(0, 2 / fan_in), as the VampPrior and Exemplar VAE authors' `he_init`
    does for each of their linear layers (Keras's default is Glorot uniform); biases stay as they are."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if weight.path.endswith("kernel") and len(weight.shape) == 2:
            fan_in = weight.shape[0]
            weight.assign(rng.normal(0.0, math.sqrt(2.0 / fan_in), size=weight.shape).astype(np.float32))


def learning_rate(args, steps_per_epoch):
    """The optimizer's learning rate: a number, or a cosine decay to 0 over --epochs."""
    if args.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(args.learning_rate, decay_steps=args.epochs * steps_per_epoch)
    return args.learning_rate


class KLWarmup(callbacks.KLWarmup):
    """The authors' warm-up: beta = min(1, e / warmup_epochs) for the 1-based epoch e, so the first epoch
    trains with beta = 1 / warmup_epochs, not 0 (with no KL term at all, the posteriors' KL ran to
    thousands of nats in a one-epoch smoke run of this setup)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.beta = self.target * min(1.0, (epoch + 1) / self.epochs)


class Patience:
    """Early stopping on a bound to maximize: stops once `patience` epochs at full KL weight have not
    improved on the best value so far (epochs of the warm-up before it do not count, as in the
    Exemplar VAE code, since the bound being trained is still changing).

    Args:
        patience: epochs without improvement that stop the run.
        warmup_epochs: epochs 0 .. warmup_epochs - 2 (0-based; beta < 1) never count towards the patience.
        best, best_epoch, wait: the state of a run being resumed.
    """

    def __init__(self, patience, warmup_epochs, best=-math.inf, best_epoch=None, wait=0):
        self.patience, self.warmup_epochs = patience, warmup_epochs
        self.best, self.best_epoch, self.wait = best, best_epoch, wait

    def update(self, epoch, value):
        """Takes epoch `epoch`'s (0-based) value; returns whether it is the best so far. NaN never is."""
        if value > self.best:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return True
        if epoch + 1 >= self.warmup_epochs:
            self.wait += 1
        return False

    @property
    def stop(self):
        return self.wait >= self.patience

    def state(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}


class RunState(keras.callbacks.Callback):
    """Writes the run to `run_dir` after every epoch, so that a killed run resumes from its last completed
    epoch with nothing lost; stops early on the validation ELBO and keeps the best epoch's weights.

    Each epoch writes a new checkpoint (and, when the epoch is the best, new best weights), then
    `state.json`, which names them: it is the commit point. A kill before it leaves the previous
    state.json naming the previous files, which are deleted only after it is replaced.

    Args:
        run_dir: the run's directory.
        state: the dict kept in state.json (see `new_state`); updated in place.
        patience: a `Patience`, or None when there is no validation data.
        plateau: the `keras.callbacks.ReduceLROnPlateau` of the fit, if any; its counters are saved too.
    """

    def __init__(self, run_dir, state, patience=None, plateau=None):
        super().__init__()
        self.run_dir, self.state, self.patience, self.plateau = run_dir, state, patience, plateau

    def on_train_begin(self, logs=None):
        # ReduceLROnPlateau resets its counters when training begins (it runs before this callback).
        if self.plateau is not None and self.state["plateau"] is not None:
            for name, value in self.state["plateau"].items():
                setattr(self.plateau, name, value)

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        state = self.state
        row = {name: float(value) for name, value in (logs or {}).items()}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        for name, value in row.items():
            state["history"].setdefault(name, []).append(value)
        state["train_seconds"] += time.perf_counter() - self._start
        state["epochs_done"] = epoch + 1
        state["checkpoint"] = f"checkpoint-{epoch + 1:05d}.keras"
        self.model.save(os.path.join(self.run_dir, state["checkpoint"]))
        if self.patience is not None:
            if self.patience.update(epoch, row["val_elbo"]):
                state["best_weights"] = f"best-{epoch + 1:05d}.npz"
                with atomic.atomic_path(os.path.join(self.run_dir, state["best_weights"])) as tmp:
                    np.savez(tmp, *self.model.get_weights())
            state["early_stopping"] = self.patience.state()
            if self.patience.stop:
                state["stopped_early"] = True
                self.model.stop_training = True
        if self.plateau is not None:
            counters = ("wait", "best", "cooldown_counter")
            state["plateau"] = {name: _plain(getattr(self.plateau, name)) for name in counters}
        write_state(self.run_dir, state)
        remove_unreferenced(self.run_dir, state)


def _plain(value):
    return float(value) if isinstance(value, (float, np.floating)) else int(value)


def new_state(settings):
    return {
        "settings": settings,
        "epochs_done": 0,
        "history": {},
        "checkpoint": None,
        "best_weights": None,
        "early_stopping": None,
        "stopped_early": False,
        "plateau": None,
        "train_seconds": 0.0,
        "sessions": 0,
    }


def read_state(run_dir):
    """The run's state.json, or None for a new run; leftovers of a killed write are removed."""
    for leftover in glob.glob(os.path.join(run_dir, ".tmp-*")):
        pid = re.match(r"\.tmp-(\d+)-", os.path.basename(leftover))
        if pid is None or not atomic.process_alive(int(pid.group(1))):
            os.remove(leftover)
    path = os.path.join(run_dir, STATE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    remove_unreferenced(run_dir, state)
    return state


def write_state(run_dir, state):
    with atomic.atomic_path(os.path.join(run_dir, STATE)) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1)


def remove_unreferenced(run_dir, state):
    """Deletes the checkpoints and best weights that state.json no longer names."""
    keep = {state["checkpoint"], state["best_weights"]}
    for path in glob.glob(os.path.join(run_dir, "checkpoint-*.keras")) + glob.glob(os.path.join(run_dir, "best-*.npz")):
        if os.path.basename(path) not in keep:
            os.remove(path)


def check_settings(run_dir, stored, settings):
    """A resumed run must be the same run: every setting that shapes training must match (the epoch
    budget too under a cosine schedule, whose decay length it sets)."""
    names = RUN_SETTINGS + (("epochs",) if settings["lr_schedule"] == "cosine" else ())
    for name in names:
        started = stored.get(name, SETTING_DEFAULTS.get(name))
        if started != settings[name]:
            flag = "--no-bias-init" if name == "bias_init" else f"--{name.replace('_', '-')}"
            raise UsageError(
                f"{flag}: the run in {run_dir} was started with {started!r}, this command gives "
                f"{settings[name]!r}; re-run its own command to continue it, or choose another --run-dir."
            )


def learning_curve(history, best_epoch, path):
    """Draws the train and validation ELBO per epoch (1-based) to the PNG `path`, atomically."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=100)
    ax = figure.add_subplot()
    epochs = np.arange(1, len(history["elbo"]) + 1)
    ax.plot(epochs, history["elbo"], label="train ELBO (dynamic binarization)")
    if "val_elbo" in history:
        ax.plot(epochs, history["val_elbo"], label="validation ELBO")
    if best_epoch is not None:
        ax.axvline(best_epoch + 1, color="grey", linestyle=":", label=f"best epoch ({best_epoch + 1})")
    finite = np.concatenate([np.asarray(v, float) for k, v in history.items() if k in ("elbo", "val_elbo")])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        # The first epochs' bounds are far below the rest: show the range where the curves separate.
        ax.set_ylim(np.percentile(finite, 5) - 1.0, finite.max() + 1.0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per image)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    with atomic.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def split(args):
    """(train, validation or None, test) images, flat (or (N, height, width, 1) for `--architecture conv`):
    validation is the last --validation-examples of the training images, binarized once (seed + 1); train
    the images before them (the first --train-examples); test the first --test-examples test images,
    binarized once (seed)."""
    dataset = data.load(args.dataset, data_dir=args.data_dir)
    shaped = (lambda x: x) if args.architecture == "conv" else data.flatten
    x_all = shaped(dataset.x_train)
    if args.validation_examples >= len(x_all):
        raise UsageError(f"--validation-examples: expected fewer than the {len(x_all)} training images of "
                         f"--dataset {args.dataset}; got {args.validation_examples}")
    x_train = x_all[: len(x_all) - args.validation_examples][: args.train_examples]
    x_validation = None
    if args.validation_examples:
        x_validation = data.binarize_static(x_all[len(x_all) - args.validation_examples :], seed=args.seed + 1)
    x_test = data.binarize_static(shaped(dataset.x_test)[: args.test_examples], seed=args.seed)
    return x_train, x_validation, x_test


def new_model(args, x_train):
    model = build_model(args.setup, x_train.shape[1:], args.latent_dim, args.prior, args.objective, args.num_samples,
                        args.seed, args.posterior_log_variance_range, args.inference)
    if args.he_init:
        he_init(model, args.seed)
    if args.bias_init:
        set_output_bias(model, x_train)
    steps_per_epoch = -(-len(x_train) // args.batch_size)
    optimizer = tfvae.training.Adam(learning_rate(args, steps_per_epoch), epsilon=SETUPS[args.setup]["adam_epsilon"])
    model.compile(optimizer, steps_per_execution=args.steps_per_execution)
    return model


def train(args, run_dir, state, x_train, x_validation):
    """Trains from the state's last completed epoch to the end (or the early stop).

    Args:
        args: the parsed command line.
        run_dir: the run's directory; `state` is read from it (or new) and written to it every epoch.
        state: the run's state (see `new_state`), updated in place.
        x_train: grey training images, binarized afresh at every use.
        x_validation: binary validation images, or None (no early stopping).

    Returns:
        The model with the best epoch's weights (the last epoch's without validation data).
    """
    if state["checkpoint"] is None:
        model = new_model(args, x_train)
    else:
        path = os.path.join(run_dir, state["checkpoint"])
        try:
            model = keras.models.load_model(path)
        except Exception as error:  # damaged outside this script: it writes checkpoints atomically
            raise ValueError(f"{path}: cannot load the checkpoint ({type(error).__name__}: {error}); move the run "
                             f"directory aside and start again.") from None
    done = state["epochs_done"]
    if done < args.epochs and not state["stopped_early"]:
        state["sessions"] += 1
        # A resumed run must not replay the shuffles and binary draws of its first epochs: the seed moves on.
        keras.utils.set_random_seed(args.seed + done)
        train_data = data.make_dataset(x_train, args.batch_size, binarization="dynamic", seed=args.seed + done)
        fit_callbacks = []
        if args.warmup_epochs:
            fit_callbacks.append(KLWarmup(args.warmup_epochs))
        plateau = None
        if args.lr_schedule == "plateau":
            plateau = keras.callbacks.ReduceLROnPlateau(
                monitor="val_elbo", mode="max", factor=0.5, patience=args.plateau_patience, min_delta=0.0, verbose=0
            )
            fit_callbacks.append(plateau)
        patience = None
        validation_data = None
        if x_validation is not None:
            patience = Patience(args.patience, args.warmup_epochs, **(state["early_stopping"] or {}))
            validation_data = data.make_dataset(x_validation, args.eval_batch_size, shuffle=False)
        fit_callbacks.append(RunState(run_dir, state, patience, plateau))
        model.fit(train_data, epochs=args.epochs, initial_epoch=done, validation_data=validation_data,
                  callbacks=fit_callbacks, verbose=args.verbose)
    if state["best_weights"] is not None:
        with np.load(os.path.join(run_dir, state["best_weights"])) as stored:
            model.set_weights([stored[f"arr_{i}"] for i in range(len(stored.files))])
    return model


def run(args, argv=None):
    start = time.perf_counter()
    run_dir = args.run_dir or default_run_dir(args)
    os.makedirs(run_dir, exist_ok=True)
    settings = {name: getattr(args, name) for name in (*RUN_SETTINGS, "epochs")}
    state = read_state(run_dir)
    if state is None:
        state = new_state(settings)
    else:
        check_settings(run_dir, state["settings"], settings)
    earlier_sessions_seconds = state["train_seconds"]  # this session's own are in its wall time
    x_train, x_validation, x_test = split(args)
    keras.utils.set_random_seed(args.seed)

    model = train(args, run_dir, state, x_train, x_validation)
    history = state["history"]
    best_epoch = state["early_stopping"]["best_epoch"] if state["early_stopping"] else None
    curve = learning_curve(history, best_epoch, os.path.join(run_dir, CURVE))

    # Evaluation draws from the seed alone, whichever session trained the model.
    keras.utils.set_random_seed(args.seed)
    eval_start = time.perf_counter()
    result = evaluate.log_likelihood(
        model, x_test, num_samples=args.eval_samples, batch_size=args.eval_batch_size, verbose=args.verbose
    )
    eval_time = time.perf_counter() - eval_start
    active = evaluate.active_units(model, x_test)
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
    spec = SETUPS[args.setup]
    body = "gated" if spec["body"] == "gated_mlp" else "tanh"
    hidden = "-".join(map(str, spec["hidden"]))
    if args.architecture == "conv":
        architecture = (f"{'x'.join(map(str, x_train.shape[1:]))} conv-{latent_name(args.latent_dim)}-conv "
                        f"(layers between z: {hidden} {body}), Bernoulli")
    else:
        architecture = f"{x_train.shape[1]}-{hidden}-{latent_name(args.latent_dim)} {body}, Bernoulli"
    epochs_run = state["epochs_done"]

    report = {
        "benchmark": "density",
        "setup": args.setup,
        "dataset": args.dataset,
        "architecture": architecture,
        "stochastic_layers": 1 if isinstance(args.latent_dim, int) else len(args.latent_dim),
        "inference": None if isinstance(args.latent_dim, int) else args.inference,
        "prior": args.prior,
        "objective": args.objective,
        "train_num_samples": args.num_samples,
        "epochs": args.epochs,
        "epochs_run": epochs_run,
        "best_epoch": None if best_epoch is None else best_epoch + 1,
        "stopped_early": state["stopped_early"],
        "patience": args.patience if x_validation is not None else None,
        "warmup_epochs": args.warmup_epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "lr_schedule": args.lr_schedule,
        "output_bias_init": args.bias_init,
        "he_init": args.he_init,
        "posterior_log_variance_range": args.posterior_log_variance_range,
        "train_examples": len(x_train),
        "validation_examples": 0 if x_validation is None else len(x_validation),
        "best_val_elbo": max(history["val_elbo"]) if "val_elbo" in history else None,
        "test_examples": result["num_examples"],
        "eval_num_samples": result["num_samples"],
        "test_nll": -result["log_likelihood"],
        "test_nll_stderr": result["log_likelihood_stderr"],
        "bits_per_dim": result["bits_per_dim"],
        "test_elbo": result["elbo"],
        "test_reconstruction": result["reconstruction"],
        "test_kl": result["kl"],
        **({"test_kl_layers": [result[f"kl_z{i}"] for i in range(1, len(args.latent_dim) + 1)]}
           if not isinstance(args.latent_dim, int) else {}),
        "test_gap": result["gap"],
        "final_train_loss": history["loss"][-1] if history.get("loss") else None,
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
        "train_seconds": state["train_seconds"],
        "train_examples_per_second": len(x_train) * epochs_run / state["train_seconds"] if epochs_run else None,
        "training_sessions": state["sessions"],
        "eval_seconds": eval_time,
        "wall_seconds": earlier_sessions_seconds + time.perf_counter() - start,
        "run_dir": run_dir,
        "learning_curve": curve,
        "command": shlex.join(["python", "benchmarks/density.py", *(sys.argv[1:] if argv is None else argv)]),
        "seed": args.seed,
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "tfvae": tfvae.__version__,
        },
    }
    with atomic.atomic_path(os.path.join(run_dir, RESULT)) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(report, indent=2) + "\n")
    return report


def default_run_dir(args):
    """benchmarks/runs/<the settings that tell runs apart>: the same command finds the same run."""
    name = f"{args.setup}{'-conv' if args.architecture == 'conv' else ''}-{args.dataset}-{args.prior}"
    name += f"-{args.objective}-k{args.num_samples}-{args.lr_schedule}"
    name += f"-warmup{args.warmup_epochs}{'' if args.bias_init else '-nobias'}{'-he' if args.he_init else ''}"
    if args.posterior_log_variance_range is not None:
        name += "-logvar{:g},{:g}".format(*args.posterior_log_variance_range)
    name += f"{'-ladder' if args.inference == 'ladder' else ''}-seed{args.seed}"
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs", name)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line naming the flag, exit 2 (argparse's usage block would bury it)."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def make_parser():
    parser = _Parser(prog="density.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=sorted(SETUPS), default="burda",
                        help="the published setup whose defaults to take (default burda)")
    parser.add_argument("--architecture", choices=("mlp", "conv"), default="mlp",
                        help="mlp: the setup's MLP encoder and decoder on flat images; conv: tfvae's convolutional "
                             "ones on the images, a hierarchy's layers between them the setup's MLP (default mlp)")
    parser.add_argument("--inference", choices=("top_down", "ladder"), default="top_down",
                        help="a hierarchy's q: top_down, the HVAE's q(z_2|x) q(z_1|x, z_2); ladder, the ladder VAE's "
                             "(p(z_1|z_2) times a bottom-up estimate). Default top_down")
    parser.add_argument("--dataset", default=None,
                        help=f"one of {', '.join(data.DATASETS)} (default: the setup's, fashion_mnist)")
    parser.add_argument("--data-dir", default=None, help="directory with the idx files (default: tfvae.data's search)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="the epoch budget (default: burda 10, exemplar-vae 2000, with early stopping)")
    parser.add_argument("--prior", choices=("normal", "vamp"), default="normal",
                        help="p(z): N(0, I) or the VampPrior with 500 pseudo-inputs (default normal)")
    parser.add_argument("--objective", choices=sorted(tfvae.objectives.OBJECTIVES), default="elbo")
    parser.add_argument("--num-samples", type=int, default=1, help="K in the training objective (default 1)")
    parser.add_argument("--latent-dim", type=latent_dims, default=None,
                        help="D, or D1,D2,... for a hierarchy, bottom first (default: burda 50, exemplar-vae 40)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="Adam's; default: burda 1e-3, exemplar-vae 5e-4")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                        help="constant; cosine (decay to 0 over --epochs); plateau (halve it when the validation "
                             "ELBO has not improved for --plateau-patience epochs). Default constant")
    parser.add_argument("--plateau-patience", type=int, default=10, help="for --lr-schedule plateau (default 10)")
    parser.add_argument("--warmup-epochs", type=int, default=None,
                        help="epochs of linear KL warm-up, 0 for none (default: burda 0, exemplar-vae 100)")
    parser.add_argument("--patience", type=int, default=None,
                        help="stop after this many epochs past the warm-up without a better validation ELBO "
                             "(default: the setup's, 50; needs validation data)")
    parser.add_argument("--no-bias-init", dest="bias_init", action="store_false",
                        help="leave the decoder's output bias at 0 instead of the logit of the mean training pixel")
    parser.add_argument("--he-init", action="store_true",
                        help="draw the dense kernels from N(0, 2 / fan_in), the authors' initialization (default: "
                             "Keras's Glorot uniform)")
    parser.add_argument("--posterior-log-variance-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="q(z|x)'s scale from a log-variance clipped to [LOW, HIGH], the authors' -6 2 (default: "
                             "softplus with a 1e-4 floor)")
    parser.add_argument("--steps-per-execution", type=int, default=50, help="Keras steps per graph call (default 50)")
    parser.add_argument("--train-examples", type=int, default=None, help="first N training images (default all)")
    parser.add_argument("--validation-examples", type=int, default=None,
                        help="the last N training images, held out for early stopping (default: burda 0, "
                             "exemplar-vae 10000)")
    parser.add_argument("--test-examples", type=int, default=None, help="first N test images (default all)")
    parser.add_argument("--eval-samples", type=int, default=5000, help="K for the test log-likelihood (default 5000)")
    parser.add_argument("--eval-batch-size", type=int, default=100)
    parser.add_argument("--infer-steps", type=int, default=100, help="model.infer steps for the amortization gap")
    parser.add_argument("--infer-learning-rate", type=float, default=1e-2)
    parser.add_argument("--infer-samples", type=int, default=1, help="K per model.infer step (default 1)")
    parser.add_argument("--gap-examples", type=int, default=1000, help="test images for the amortization gap")
    parser.add_argument("--gap-elbo-samples", type=int, default=100, help="K in each ELBO of the gap (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=None,
                        help="the run's checkpoints and state; re-running the same command resumes it "
                             "(default benchmarks/runs/<setup>-<dataset>-<prior>-...)")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2, help="Keras verbosity (default 2)")
    parser.add_argument("--output", default=None, help="also write the JSON here, e.g. benchmarks/results/NAME.json")
    return parser


def latent_dims(text):
    """--latent-dim: an int D >= 1, or a list of them for a hierarchy ("40,40"), as the run's state keeps it."""
    try:
        dims = [int(part) for part in text.split(",")]
    except ValueError:
        dims = []
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected D or D1,D2,... (integers >= 1); got {text!r}")
    return dims[0] if len(dims) == 1 else dims


def latent_name(latent_dim):
    return str(latent_dim) if isinstance(latent_dim, int) else "(" + ",".join(map(str, latent_dim)) + ")"


def parse_args(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    setup = SETUPS[args.setup]
    patience_given = args.patience is not None
    for name in ("dataset", "epochs", "latent_dim", "learning_rate", "validation_examples", "warmup_epochs",
                 "patience"):
        if getattr(args, name) is None:
            setattr(args, name, setup[name])
    for name in ("epochs", "num_samples", "batch_size", "steps_per_execution", "eval_samples",
                 "eval_batch_size", "infer_samples", "gap_examples", "gap_elbo_samples", "plateau_patience"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an integer >= 1; got {getattr(args, name)}")
    for name in ("train_examples", "test_examples", "patience"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an integer >= 1; got {getattr(args, name)}")
    for name in ("infer_steps", "warmup_epochs", "validation_examples"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')}: expected an integer >= 0; got {getattr(args, name)}")
    for name in ("learning_rate", "infer_learning_rate"):
        if not (getattr(args, name) > 0 and math.isfinite(getattr(args, name))):
            parser.error(f"--{name.replace('_', '-')}: expected a finite number > 0; got {getattr(args, name)}")
    bounds = args.posterior_log_variance_range
    if bounds is not None and not (all(map(math.isfinite, bounds)) and bounds[0] < bounds[1]):
        parser.error(f"--posterior-log-variance-range: expected finite LOW < HIGH; got {bounds[0]:g} {bounds[1]:g}")
    if args.validation_examples == 0:
        for flag, given in (("--lr-schedule plateau", args.lr_schedule == "plateau"), ("--patience", patience_given)):
            if given:
                parser.error(f"{flag}: needs validation data; give --validation-examples N (--setup {args.setup} "
                             f"holds none out)")
        args.patience = None
    elif args.patience is None:
        parser.error(f"--patience: needed with validation data (--setup {args.setup} has no default); "
                     f"give --patience N")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        result = run(args, argv)
    except UsageError as error:
        make_parser().error(str(error))
    text = json.dumps(result, indent=2)
    if args.output:
        with atomic.atomic_path(args.output) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
