"""The `tfvae` commands that use a trained run: evaluate, export, sample, reconstruct, encode, plot-latent (score: cli/score.py).

Each checks its request against the resource rule (`tfvae.resources`) before any work starts, and
reports errors of the library in the words of the command line: flags, not parameter names.
"""

import contextlib
import json
import math
import os
import secrets
import sys

import numpy as np

from tfvae import plots, resources
from tfvae.cli import flags, quiet_native_logs, runs

BATCH = 500  # examples per forward pass for encode/reconstruct
EXPORT_CHECKED = 10_000  # examples of each split of a streamed source that an export is checked on


def check_training(config, shape):
    """Refuses, before `tfvae train` builds or writes anything, a run that would not fit the resource rule.

    Args:
        config: the run's configuration (tfvae.cli.train), with latent_dim, architecture,
            batch_size and num_samples.
        shape: the shape of one example of its data.
    """
    latent_dim, batch_size, num_samples = config["latent_dim"], config["batch_size"], config["num_samples"]
    given = latent_dim if isinstance(latent_dim, int) else ",".join(map(str, latent_dim))
    latent_dim = latent_dim if isinstance(latent_dim, int) else sum(latent_dim)  # every layer's z, concatenated
    parameters = resources.model_bytes(shape, latent_dim, config["architecture"])
    resources.check_memory(parameters, f"--latent-dim {given}")
    step = resources.step_bytes(shape, latent_dim, config["architecture"], batch_size, num_samples)
    resources.check_memory(parameters + step, f"--num-samples {num_samples} with --batch-size {batch_size}")


def check_support(x, name, likelihood):
    """`tfvae.checks.check_values` of training data, its advice naming the command's flags."""
    from tfvae import checks

    with flags.named({}):
        checks.check_values(x, name, likelihood)


def evaluate(args):
    from tfvae import evaluate as evaluation

    model = runs.load_model(args.run)
    config = config_if_any(args.run)
    name = args.dataset or config.get("dataset")
    if name is None:
        raise ValueError(f"{args.run}: has no {runs.CONFIG} to name its dataset; pass --dataset.")
    with flags.about(f"--dataset {name}") if args.dataset else contextlib.nullcontext():
        x, labels = runs.evaluation_data(config, runs.open_source(config, name))
    x = runs.as_model_input(x, model.event_shape, f"--dataset {name}")
    batch_size = _batch_for_progress(model, args.num_samples, args.batch_size)
    condition = labels_as_conditions(model, labels, f"--dataset {name}")
    with flags.named({"data": f"--dataset {name}", "precision": "--precision", "proposal": "--proposal"}):
        result = evaluation.log_likelihood(model, x, num_samples=args.num_samples, batch_size=batch_size,
                                           verbose=0 if args.json else 1, precision=args.precision,
                                           condition=condition, proposal=args.proposal, method=args.method,
                                           ais_steps=args.ais_steps)
    result.update(
        precision=args.precision,
        ais_steps=args.ais_steps if args.method == "ais" else None,
        active_units=evaluation.active_units(model, x, condition=condition),
        latent_dim=model.get_config()["latent_dim"],  # a hierarchy's per layer, as active_units counts
        run=args.run,
        dataset=name,
        split="test",
        binarized=config.get("binarization") in ("dynamic", "static"),
    )
    if args.json:
        # NaN (the standard error of one example) is not JSON: null.
        result = {key: None if isinstance(v, float) and math.isnan(v) else v for key, v in result.items()}
        print(json.dumps(result, indent=2))
    else:
        print(_table(result))
    if result["unreliable_fraction"] > UNRELIABLE_WARNING:
        print(_unreliable_warning(result), file=sys.stderr)
    return 0


# The share of unreliable estimates above which `evaluate` warns.
UNRELIABLE_WARNING = 0.05


def _unreliable_warning(r):
    remedy = {"encoder": "--proposal refined or --method ais", "refined": "--method ais"}.get(r["proposal"])
    remedy = remedy if r["method"] == "importance" else "more --ais-steps"
    return (f"warning: {r['unreliable_fraction']:.0%} of the {r['num_examples']} per-image estimates are unreliable "
            f"(PSIS k-hat > 0.7 with a standard error > 0.05 nats, or ESS < 1% of K); try {remedy}.")


def _table(r):
    binarized = f", binarized with seed {runs.TEST_BINARIZATION_SEED}" if r["binarized"] else ""
    stderr = r["log_likelihood_stderr"]
    # One example has no sample standard deviation: say so rather than print "± nan".
    log_p = (f"{r['log_likelihood']:.2f} nats (one example: no standard error)" if math.isnan(stderr)
             else f"{r['log_likelihood']:.2f} ± {stderr:.2f} nats")
    estimator = (f"AIS, {r['num_samples']} chains of {r['ais_steps']} steps" if r["method"] == "ais" else
                 f"importance sampling, K = {r['num_samples']}" + (", refined proposal" if r["proposal"] == "refined" else ""))
    k_hat = "n/a" if math.isnan(r["pareto_k_max"]) else f"{r['pareto_k_max']:.2f}"
    layers = r["latent_dim"] if isinstance(r["latent_dim"], list) else []  # a hierarchy's, bottom first
    rows = [
        ("log p(x)", log_p, estimator + (", decoder in bfloat16" if r["precision"] == "bfloat16" else "")),
        ("bits/dim", f"{r['bits_per_dim']:.4f}", ""),
        ("ELBO", f"{r['elbo']:.2f} nats", "reconstruction - KL"),
        ("  reconstruction", f"{r['reconstruction']:.2f} nats", "E_q log p(x|z)"),
        ("  KL", f"{r['kl']:.2f} nats", "KL(q(z|x) || p(z))"),
        *((f"    layer z{i}", f"{r[f'kl_z{i}']:.2f} nats", f"KL of z{i}") for i in range(1, len(layers) + 1)),
        ("gap", f"{r['gap']:.2f} nats", "log p(x) - ELBO"),
        ("active units", f"{_per_layer(r['active_units'])} of {_per_layer(r['latent_dim'])}",
         "Var_x E_q[z_u] > 0.01" + ("; layers z1 + z2 + ..." if layers else "")),
        ("unreliable", f"{r['unreliable_fraction']:.1%}", "of the per-image estimates (docs/density.md)"),
        ("  k-hat max", k_hat, "PSIS; > 0.7 is a heavy tail"),
        ("  ESS min", f"{r['ess_min']:.1f}", f"of {r['num_samples']}"),
    ]
    lines = [f"{r['run']}: {r['dataset']} test split, {r['num_examples']} images{binarized}"]
    lines += [f"  {name:<16} {value:<22} {note}".rstrip() for name, value, note in rows]
    return "\n".join(lines)


def _per_layer(counts):
    """A count, or a hierarchy's counts per layer as "3 + 2"."""
    return " + ".join(map(str, counts)) if isinstance(counts, list) else str(counts)


def export(args):
    from tfvae import export as exporting
    from tfvae import parity

    quantize = None if args.quantize == "none" else args.quantize
    directory = args.out or os.path.join("export", os.path.basename(os.path.normpath(args.run)))
    run = os.path.realpath(args.run)
    if os.path.commonpath([run, os.path.realpath(directory)]) == os.path.realpath(directory):
        raise ValueError(f"--out: {directory} holds the run {args.run}; an export there would replace it.")
    exporting.check_directory(os.path.abspath(directory), args.overwrite, "--out", "--overwrite")
    model = runs.load_model(args.run)
    config = config_if_any(args.run)
    sample_inputs = sample_conditions = None
    if "dataset" in config:
        source = runs.open_source(config)
        # The test images first (the batch checked against Keras), then the training images: the export is
        # checked on the data the model was trained on, where a few images can reach extreme parameters.
        # A streamed source gives the first EXPORT_CHECKED of each split.
        limit = None if source.kind == "bundled" else EXPORT_CHECKED
        (x_test, y_test), (x_train, y_train) = (runs.evaluation_data(config, source, split, limit)
                                                for split in ("test", "train"))
        sample_inputs = np.concatenate([x_test, x_train])
        if model.condition_shape is not None:
            sample_conditions = labels_as_conditions(model, np.concatenate([y_test, y_train]),
                                                     f"the run's dataset {config['dataset']}")
    # The parity check runs log_prob with K samples on each runtime without a progress bar.
    runtimes = 2 + (not args.no_tflite) + (quantize is not None)  # Keras, the SavedModel, each TFLite model
    parity_examples = parity.PARITY_BATCH if sample_inputs is None else min(parity.PARITY_BATCH, len(sample_inputs))
    resources.check_step(runtimes * parity_examples * args.log_prob_samples * math.prod(model.event_shape),
                         f"--log-prob-samples {args.log_prob_samples} (checked in {runtimes} runtimes on "
                         f"{parity_examples} examples)")
    names = {"directory": "--out", "log_prob_samples": "--log-prob-samples", "quantize": "--quantize",
             "sample_inputs": f"the images of the run's dataset {config.get('dataset')}"}
    with flags.named(names), quiet_native_logs():  # the TFLite converter's "Ignored output_format." and the like
        manifest = exporting.save(model, directory, tflite=not args.no_tflite, quantize=quantize,
                                  log_prob_samples=args.log_prob_samples, overwrite=args.overwrite,
                                  sample_inputs=sample_inputs, sample_conditions=sample_conditions)
    files = [f"{f['path']} ({f['bytes'] / 1e6:.1f} MB)" for f in manifest.get("files", {}).values()]
    print(f"Exported {args.run} to {directory}: {', '.join(files + ['manifest.json'])}.")
    parity = manifest.get("parity", {}).get("max_abs_diff", {})
    differences = [d for runtimes in parity.values() for d in runtimes.values()]
    if differences:
        print(f"Checked against the Keras model: largest difference {max(differences):.2g}.")
    return 0


def sample(args):
    output = runs.output_path(args.output, (".png", ".npy"))
    model = runs.load_model(args.run)
    picture = 0 if output.lower().endswith(".npy") else _grid_pixels(model.event_shape)
    request = f"-n {args.num}"
    resources.check_memory(resources.sampling_bytes(args.num, model.event_shape, model.latent_dim, picture), request)
    resources.check_step(args.num * math.prod(model.event_shape), request)
    condition = _one_hot_class(model, args.condition)
    # A fresh seed unless one is given: the model's own generator starts alike after every load.
    seed = secrets.randbelow(2**31) if args.seed is None else args.seed
    x = np.asarray(model.sample(args.num, seed=seed, condition=condition))
    _write_images(x, output)
    of_class = "" if condition is None else f" of class {args.condition}"
    print(f"Wrote {args.num} samples{of_class} (seed {seed}) to {output}.")
    return 0


def one_hot_labels(labels, classes, source):
    """Class labels as one-hot conditions, (N, classes) float32, the conditions of `--condition labels`.

    Args:
        labels: int class labels, or None.
        classes: the number of classes.
        source: where the labels come from, for messages, e.g. "--dataset digits".
    """
    if labels is None:
        raise ValueError(f"{source} has no labels; a conditional model needs them as its conditions.")
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"{source}: expected labels from 0 to {classes - 1}, the model's classes; "
                         f"got {labels.min()} to {labels.max()}.")
    resources.check_memory(len(labels) * classes * 4, f"{source}: {classes} classes (the largest label + 1)")
    one_hot = np.zeros((len(labels), classes), np.float32)
    one_hot[np.arange(len(labels)), labels] = 1.0
    return one_hot


def labels_as_conditions(model, labels, source):
    """The one-hot conditions of class labels for a model trained with --condition labels; None for another model."""
    return None if model.condition_shape is None else one_hot_labels(labels, model.condition_shape[0], source)


def _one_hot_class(model, index):
    """`--condition C` as the one-hot condition of class C; None for an unconditional model without one."""
    if model.condition_shape is None:
        if index is not None:
            raise ValueError("--condition: this run's model is unconditional (trained without --condition labels).")
        return None
    (classes,) = model.condition_shape
    if index is None:
        raise ValueError(f"--condition: this run's model is conditional; give the class to draw, 0 to {classes - 1}.")
    if index >= classes:
        raise ValueError(f"--condition: expected a class from 0 to {classes - 1}; got {index}.")
    return np.eye(classes, dtype=np.float32)[index]


def reconstruct(args):
    output = runs.output_path(args.output, (".png", ".npy"))
    model = runs.load_model(args.run)
    x, _, _ = runs.read_input(args.input, model.event_shape)
    if output.lower().endswith(".png"):
        x = x[: args.num]
    with flags.named({"x": f"--input {args.input}"}):
        reconstructions = _batched(lambda b: np.asarray(model.reconstruct(b)), x)
    if output.lower().endswith(".png"):
        plots.image_grid(plots.interleave(x, reconstructions), output)
        print(f"Wrote {len(x)} inputs (odd rows) and their reconstructions (even rows) to {output}.")
    else:
        _save_npy(output, reconstructions)
        print(f"Wrote {len(x)} reconstructions, shape {reconstructions.shape}, to {output}.")
    return 0


def encode(args):
    output = runs.output_path(args.output, (".npy", ".npz"))
    model = runs.load_model(args.run)
    x, _, _ = runs.read_input(args.input, model.event_shape)

    def moments(batch):  # one encoder pass per batch for both: [batch, 2, latent_dim]
        q = model.encode(batch)
        return np.stack([q.mean(), q.stddev()], axis=1)

    with flags.named({"x": f"--input {args.input}"}):
        both = _batched(moments, x)
    mean, stddev = both[:, 0], both[:, 1]
    if output.lower().endswith(".npz"):
        with runs.atomic_path(output) as tmp:
            np.savez(tmp, mean=mean, stddev=stddev)
        print(f"Wrote the posterior means and standard deviations, shape {mean.shape}, to {output}.")
    else:
        _save_npy(output, mean)
        print(f"Wrote the posterior means, shape {mean.shape}, to {output}.")
    return 0


def plot_latent(args):
    output = runs.output_path(args.output, (".png",))
    model = runs.load_model(args.run)
    if args.input is not None:
        x, labels, _ = runs.read_input(args.input, model.event_shape)
        source = args.input
    else:
        config = runs.read_config(args.run)
        x, labels = runs.open_source(config).read("test")
        x = runs.as_model_input(x, model.event_shape, f"the run's dataset {config['dataset']}")
        source = f"{config['dataset']} test split"
    with flags.named({"x": f"--input {source}" if args.input is not None else source}):
        z = _batched(lambda b: np.asarray(model.encode(b).mean()), x)
    how = "posterior means" if model.latent_dim <= 2 else f"posterior means, {model.latent_dim}-D projected by PCA"
    plots.latent_scatter(z, labels, output, title=f"{source}: {how}")
    print(f"Wrote a scatter plot of {len(z)} {how} to {output}.")
    return 0


def _batch_for_progress(model, num_samples, batch_size):
    """--batch-size, made smaller if needed so a batch of K samples each is one step of the resource
    rule; refuses a K whose one example is already more."""
    event_size = math.prod(model.event_shape)
    resources.check_step(num_samples * event_size, f"--num-samples {num_samples} (per example)")
    return resources.examples_per_step(num_samples, event_size, batch_size)


def _grid_pixels(event_shape):
    """Values per image in a PNG grid of images of this shape (see plots.tile); 0 if they are not images."""
    try:
        height, width, channels = plots.as_images(np.zeros((1, *event_shape))).shape[1:]
    except ValueError:  # the grid itself will say why
        return 0
    scale = plots.default_scale(height, width)
    return (height * scale + 1) * (width * scale + 1) * channels


def config_if_any(run):
    """The run's config.json, or {} for a run directory without one."""
    return runs.read_config(run) if os.path.isfile(os.path.join(run, runs.CONFIG)) else {}


def _batched(function, x, batch_size=BATCH):
    return np.concatenate([function(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def _write_images(x, output):
    if output.lower().endswith(".npy"):
        _save_npy(output, x)
    else:
        plots.image_grid(x, output, ncols=min(8, max(1, math.isqrt(len(x) - 1) + 1)))


def _save_npy(path, array):
    with runs.atomic_path(path) as tmp:
        np.save(tmp, array)
