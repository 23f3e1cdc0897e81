"""Training throughput: tfvae's `fit` against plain PyTorch and a keras.io-style VAE, and each of tfvae's
performance defaults switched off alone (`--levers`). Part of `throughput.py` (its "training" and
"levers" sections)."""

import contextlib
import statistics
import sys

import keras
import tensorflow as tf

import keras_io_vae
import torch_vae
import tfvae
from common import LATENT_DIM, summary, torch_available, training_flops_per_example, two_layer_training_flops_per_example
from tfvae import data


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
    # "two_layers": the same MLPs with a second stochastic layer of the same size above z (tfvae.heads.hierarchy).
    latent_dim = (LATENT_DIM, LATENT_DIM) if variant == "two_layers" else LATENT_DIM
    model = model_class(input_shape=(x.shape[1],), latent_dim=latent_dim)
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


def benchmark_training(x, args, log):
    """Every contender trains once per round, in a rotating order; returns per-contender summaries."""
    flops = training_flops_per_example(x.shape[1])
    # tfvae thrice: fit on make_dataset's pipeline, fit(x, batch_size=...) on an array, and the 2-layer hierarchy.
    contenders, skipped, versions = ["tfvae", "tfvae_arrays", "tfvae_2_layers"], {}, {}
    for peer in args.peers:
        reason = torch_available() if peer == "torch" else None
        if reason:
            skipped[peer] = reason
        else:
            contenders.append(peer)
    runs = {name: [] for name in contenders}
    for round_ in range(args.repeats):
        shift = round_ % len(contenders)
        for name in contenders[shift:] + contenders[:shift]:
            seed = args.seed + round_
            if name in ("tfvae_arrays", "tfvae_2_layers"):
                variant = "arrays" if name == "tfvae_arrays" else "two_layers"
                run, _ = train_tfvae(x, args.epochs, args.batch_size, args.warmup_epochs, seed, variant)
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
    two_layers = two_layer_training_flops_per_example(x.shape[1])
    result = {name: summary(r, two_layers if name == "tfvae_2_layers" else flops) for name, r in runs.items()}
    result["tfvae"]["defaults"] = defaults
    for name, reason in skipped.items():
        result[name] = {"skipped": reason}
    ratios, per_round = {}, {}
    for ours in ("tfvae", "tfvae_arrays", "tfvae_2_layers"):
        rates = [r["examples_per_second"] for r in runs[ours]]
        for name in contenders:
            if name.startswith("tfvae"):
                continue
            key = f"{ours}_vs_{name}"
            ratios[key] = result[ours]["examples_per_second_median"] / result[name]["examples_per_second_median"]
            per_round[key] = statistics.median(t / r["examples_per_second"] for t, r in zip(rates, runs[name]))
    for ours in ("tfvae_arrays", "tfvae_2_layers"):
        ratios[f"{ours}_vs_tfvae"] = (result[ours]["examples_per_second_median"]
                                      / result["tfvae"]["examples_per_second_median"])
    return {
        "model": "784-200-200-50 tanh MLP VAE (Burda et al. 2015), diagonal Gaussian q, N(0, I) prior, "
                 "Bernoulli p(x|z), Adam 1e-3, dynamic binarization; tfvae_2_layers: latent_dim=(50, 50), "
                 "q(z2|x) q(z1|x,z2), p(z2) p(z1|z2), each conditional a 200-200 tanh MLP",
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
    result = {lever: summary(r, flops) for lever, r in runs.items()}
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
