"""`tfvae train`: fit a VAE and write a run directory that survives being killed at any moment.

Resuming works from checkpoints/epoch-NNNN.keras, the whole model with its optimizer state, saved
by the last callback of every epoch. Callbacks run in list order, so when that checkpoint exists
the epoch's history row and pictures are already on disk; a resumed run drops the history rows of
epochs after the checkpoint (an epoch cut short by the kill) and goes on from there.

Nothing is written until the run's lock is held and everything (config, dataset, checkpoint) has
been checked, so a refused `train` leaves the run as it was and two at once cannot mix their files.
"""

import contextlib
import csv
import importlib.util
import io
import os
import re
import sys

import keras
import numpy as np
import tensorflow as tf

from tfvae import VAE, callbacks, data, distribute, heads, plots, resources, schedules, sources, training
from tfvae.cli import TRAIN_DEFAULTS as DEFAULTS
from tfvae.cli import commands, flags, runs

RECONSTRUCTED_IMAGES = 32
SAMPLED_IMAGES = 64  # about; a conditional run's are a whole number of rows of one sample per class
VALIDATION_BATCH = 500
DIAGNOSED = 10_000  # test examples of a streamed source that the diagnostics score
SUPPORT_BATCH = 4096  # examples of a stream checked at a time before training


def train(args):
    runs.check_out(args.out)
    strategy = distribute.cluster_strategy()
    if strategy is not None:
        return _train_in_cluster(args, strategy)
    if args.resume:
        if args.out is None:
            raise ValueError("--resume: name the run to resume with --out RUN.")
        runs.read_config(args.out)  # a folder that is no run gets no lock file
        with runs.locked(args.out):
            return _resume(args.out, args)
    run = args.out if args.out is not None else _free_run_name(args.dataset or DEFAULTS["dataset"])
    _check_new_run(run)
    config = _new_config(args)
    prepared = _prepare(config, 0, None)
    os.makedirs(run, exist_ok=True)
    with runs.locked(run):
        _check_new_run(run)  # again under the lock: another `tfvae train` may have begun it meanwhile
        return _train(run, config, 0, *prepared)


def _train_in_cluster(args, strategy):
    """One worker of the cluster TF_CONFIG describes: every worker trains the same model on its share of
    each global batch of --batch-size; the chief (worker 0) alone writes the run, as without a cluster.
    The others read the run (to resume) from the same path, which must be shared or copied to them."""
    if args.out is None:
        raise ValueError("--out: name the run when training in a cluster (TF_CONFIG): every worker must use the same.")
    if strategy.extended.should_checkpoint:
        if args.resume:
            runs.read_config(args.out)
            with runs.locked(args.out):
                return _resume(args.out, args, strategy)
        _check_new_run(args.out)
        config = _new_config(args)
        prepared = _prepare(config, 0, None, strategy)
        os.makedirs(args.out, exist_ok=True)
        with runs.locked(args.out):
            _check_new_run(args.out)
            return _train(args.out, config, 0, *prepared)
    if args.resume:
        done, checkpoint = runs.latest_checkpoint(args.out)
        config = _resume_config(runs.read_config(args.out), args, done)
    else:
        done, checkpoint, config = 0, None, _new_config(args)
    _, train_data, validation_data, model = _prepare(config, done, checkpoint, strategy)
    resolver = strategy.cluster_resolver
    tasks = distribute.cluster_size(resolver)
    print(f"{resolver.task_type} {resolver.task_id} of a cluster of {tasks}: training epochs {done + 1} to "
          f"{config['epochs']} with the others; the chief writes {args.out}.", flush=True)
    if done < config["epochs"]:
        model.fit(train_data, epochs=config["epochs"], initial_epoch=done, validation_data=validation_data,
                  shuffle=False, verbose=0)
    return 0


def _resume(run, args, strategy=None):
    done, checkpoint = runs.latest_checkpoint(run)
    config = _resume_config(runs.read_config(run), args, done)
    if done == 0 and os.path.exists(os.path.join(run, runs.MODEL)):
        raise ValueError(f"{run}: has {runs.MODEL} but no checkpoint in {runs.CHECKPOINTS}/ to resume from.")
    if done >= config["epochs"] and os.path.exists(os.path.join(run, runs.MODEL)):
        print(f"{run}: already trained for {done} epochs; nothing to do (--epochs N > {done} trains longer).")
        return 0
    return _train(run, config, done, *_prepare(config, done, checkpoint, strategy))


def _check_new_run(run):
    if runs.is_unused(run):
        return
    if os.path.exists(os.path.join(run, runs.CONFIG)):
        raise FileExistsError(f"--out: {run} already exists; continue it with --resume, or choose another --out.")
    raise FileExistsError(f"--out: {run} already exists and is neither empty nor a run; choose another --out.")


def _prepare(config, done, checkpoint, strategy=None):
    """Everything training needs, checked before anything is written: a refused run is left as it was.

    The model is made (or loaded) in `strategy`'s scope, if given; it then trains under it.

    Returns:
        (source, training batches, validation batches, model); completes config["input_shape"] and
        config["data"], what the source is.
    """
    for key, registry in (("likelihood", heads.LIKELIHOODS), ("prior", heads.PRIORS)):
        if config[key] not in registry:  # a hand-edited config.json
            raise ValueError(f"--{key}: expected one of {', '.join(registry)}; got {config[key]!r}.")
    source = runs.open_source(config)
    image_shape = tuple(source.event_shape)
    if "input_shape" in config and tuple(config["input_shape"]) != image_shape:  # a resumed run's
        raise ValueError(f"--dataset: {config['dataset']} now has examples of shape {image_shape}; the run was trained "
                         f"on {tuple(config['input_shape'])}.")
    config["input_shape"] = list(image_shape)
    described, before = source.describe(), config.get("data")
    config["data"] = described
    commands.check_training(config, image_shape)
    if config["diagnostics_every"]:  # refused now, not after the first epoch
        resources.check_step(config["diagnostics_samples"] * int(np.prod(image_shape)),
                             f"--diagnostics-samples {config['diagnostics_samples']} (per test image)")
    classes = _classes(config, source)
    labels = None if classes is None else "one_hot"
    keras.utils.set_random_seed(config["seed"])
    binarization = None if config["binarization"] == "none" else config["binarization"]
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = _model(config, checkpoint, image_shape, classes)
    # A resumed run goes on with the shuffles and binary draws an uninterrupted run would have: each new
    # iterator of the pipeline draws the next ones, so the iterators `done` epochs of fit made are made and
    # dropped first. A strategy's distributed copy of the pipeline counts its own iterators from 0: there the
    # seed moves on instead, so no epoch's draws come again.
    seed = config["seed"] + (done if strategy is not None else 0)
    train_data = _training_batches(source, config, binarization, seed, labels, strategy)
    if strategy is None:
        data.skip_iterations(train_data, done * training.KERAS_ITERATORS_PER_EPOCH)
    validation_data = source.dataset("test", VALIDATION_BATCH, "static" if binarization else None, shuffle=False,
                                     seed=runs.TEST_BINARIZATION_SEED, labels=labels)
    _check_support(config, source, model, binarization)
    for ds in (train_data, validation_data):  # checked whole: fit need not check each batch again
        if isinstance(ds, tf.data.Dataset):
            data.mark_checked(ds)
    if before is not None and (before["train_examples"], before["test_examples"]) != (
            described["train_examples"], described["test_examples"]):
        print(f"warning: {config['dataset']} now has {described['train_examples']} train and "
              f"{described['test_examples']} test examples; the run began with {before['train_examples']} and "
              f"{before['test_examples']}.", file=sys.stderr)
    return source, train_data, validation_data, model


def _check_support(config, source, model, binarization):
    """Refuses data outside the likelihood's support before the run is written: a bundled dataset whole, a
    stream a batch at a time (one pass), except images to binarize, which decode into [0, 1]."""
    if source.kind in ("images", "tfrecord") and binarization is not None:
        return
    for split in ("train", "test"):
        name = f"--dataset {config['dataset']} ({split} split)"
        if source.kind == "bundled":
            x = source.arrays.x_train if split == "train" else runs.evaluation_data(config, source)[0]
            commands.check_support(x, name, model.likelihood_head)
            continue
        for x in source.dataset(split, SUPPORT_BATCH, shuffle=False):
            commands.check_support(x.numpy(), name, model.likelihood_head)


def _training_batches(source, config, binarization, seed, labels, strategy):
    """The training split's batches; under a cluster strategy, each worker's own shard of each epoch (a
    bundled dataset is read whole by every worker, which keeps its replicas' shares of each global batch)."""
    batch_size = config["batch_size"]
    if strategy is None or source.kind == "bundled":
        return source.dataset("train", batch_size, binarization, seed=seed, labels=labels)
    if batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"--batch-size: expected a multiple of the cluster's {strategy.num_replicas_in_sync} "
                         f"replicas, which read a streamed dataset in equal shares; got {batch_size}.")

    def shard(context):
        return source.dataset("train", context.get_per_replica_batch_size(batch_size), binarization, seed=seed,
                              labels=labels, shard=(context.num_input_pipelines, context.input_pipeline_id))

    return strategy.distribute_datasets_from_function(shard)


def _model(config, checkpoint, image_shape, classes):
    """The checkpoint's model, or a new one as config says, compiled."""
    if checkpoint is not None:
        model = _load_checkpoint(checkpoint, config)
    else:
        with flags.named(flags.KL_SCHEDULE):  # a schedule the other flags rule out, e.g. free_bits with iwae
            model = VAE(
                input_shape=image_shape,
                latent_dim=config["latent_dim"],
                encoder=config["architecture"],
                decoder=config["architecture"],
                likelihood=config["likelihood"],
                prior=config["prior"],
                objective=config["objective"],
                num_samples=config["num_samples"],
                seed=config["seed"],
                kl_schedule=config["kl_schedule"],
                condition_shape=None if classes is None else (classes,),
            )
        model.compile(optimizer=training.Adam(config["learning_rate"]))
    return model


def _classes(config, source):
    """The number of classes a run with `--condition labels` is conditioned on; None without it."""
    if config["condition"] is None:
        return None
    if config["condition"] != "labels":  # a hand-edited config.json
        raise ValueError(f"--condition: expected labels; got {config['condition']!r}.")
    if source.classes is None:
        raise ValueError(f"--condition labels: the dataset {config['dataset']} has no labels; a conditional model "
                         f"needs them as its conditions.")
    # The samples grid's column per class (a classes x classes block).
    resources.check_memory(4 * source.classes * source.classes,
                           f"--condition labels: the dataset {config['dataset']}: {source.classes} classes "
                           f"(the largest label + 1)")
    return source.classes


def _shown(config, source, model):
    """(test images, their one-hot conditions or None) of the pictures: spread over a bundled test split
    (sorted by class in mnist-5k), the first of a streamed one (in hash order)."""
    if source.kind == "bundled":
        x, y = source.read("test")
        shown = np.linspace(0, len(x) - 1, RECONSTRUCTED_IMAGES).astype(int)
        x, y = x[shown], None if y is None else y[shown]
    else:
        x, y = source.read("test", RECONSTRUCTED_IMAGES)
    return x, commands.labels_as_conditions(model, y, f"--dataset {config['dataset']}")


def _diagnosed(config, source, model):
    """(x, conditions or None) that the diagnostics score: the test split, at most DIAGNOSED of a streamed one."""
    x, y = runs.evaluation_data(config, source, limit=None if source.kind == "bundled" else DIAGNOSED)
    return x, commands.labels_as_conditions(model, y, f"--dataset {config['dataset']}")


def _image_grids(run, model, x, condition, log_dir):
    """The pictures' callback for the test images x. A conditional run's samples.png has a column per
    class, and its reconstructions are of the images under their own classes."""
    if model.condition_shape is None:
        return callbacks.ImageGrids(run, x=x, num_samples=SAMPLED_IMAGES, log_dir=log_dir)
    classes = model.condition_shape[0]
    rows = max(1, SAMPLED_IMAGES // classes)
    return callbacks.ImageGrids(run, x=x, condition=condition,
                                num_samples=rows * classes, ncols=classes,
                                sample_condition=np.tile(np.eye(classes, dtype=np.float32), (rows, 1)),
                                log_dir=log_dir)


def _train(run, config, done, source, train_data, validation_data, model):
    """Writes the run and fits; the caller holds the run's lock.

    config.json comes first: a run killed before it holds nothing of a run's and `tfvae train --out`
    takes it as new; one killed after it is taken by `--resume`.
    """
    runs.remove_stale_temporaries(run)
    runs.write_json(os.path.join(run, runs.CONFIG), config)
    history = os.path.join(run, runs.HISTORY)
    _keep_history_before(history, done)
    os.makedirs(os.path.join(run, runs.CHECKPOINTS), exist_ok=True)
    runs.remove_stale_temporaries(os.path.join(run, runs.CHECKPOINTS))
    log_dir = os.path.join(run, "logs")
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    image_shape = tuple(config["input_shape"])
    x_shown, c_shown = _shown(config, source, model)
    pictures = _drawable(x_shown)
    # Order matters: diagnostics first, so that their numbers reach history.csv and TensorBoard; the
    # checkpoint last (see the module docstring).
    fit_callbacks = []
    if config["diagnostics_every"]:
        x, condition = _diagnosed(config, source, model)
        fit_callbacks.append(callbacks.Diagnostics(x, condition=condition, every=config["diagnostics_every"],
                                                   num_samples=config["diagnostics_samples"]))
    diagnosed = fit_callbacks[0].keys(model) if fit_callbacks else []
    fit_callbacks.append(HistoryCSV(history, diagnosed))
    if tensorboard:
        fit_callbacks.append(keras.callbacks.TensorBoard(log_dir, write_graph=False, profile_batch=0))
    if pictures:
        fit_callbacks.append(_image_grids(run, model, x_shown, c_shown, log_dir if tensorboard else None))
    fit_callbacks.append(Checkpoint(run))

    _describe(run, config, source, done)
    if not tensorboard:
        print("TensorBoard is not installed, so no logs/ are written (pip install tensorboard).")
    if model.condition_shape is not None:
        print(f"A conditional VAE on {model.condition_shape[0]} classes: samples.png has a column per class; "
              f"draw a class C with: tfvae sample {run} --condition C")
    if not pictures:
        print(f"x of shape {image_shape} is not a grey or RGB image: no samples.png or reconstructions.png.")
    if done < config["epochs"]:
        try:
            # shuffle=False: the dataset shuffles itself; Keras would only warn that it cannot.
            model.fit(train_data, epochs=config["epochs"], initial_epoch=done, validation_data=validation_data,
                      callbacks=fit_callbacks, shuffle=False)
        except KeyboardInterrupt:
            print(f"\nStopped. Continue with: tfvae train --resume --out {run}", file=sys.stderr)
            raise
    runs.save_model(model, os.path.join(run, runs.MODEL))
    _summarize(run, history, tensorboard, pictures)
    return 0


def _new_config(args):
    config = {key: getattr(args, key) if getattr(args, key) is not None else value for key, value in DEFAULTS.items()}
    if config["binarization"] is None:
        config["binarization"] = "dynamic" if config["likelihood"] == "bernoulli" else "none"
    if config["num_samples"] is None:
        config["num_samples"] = 5 if config["objective"] == "iwae" else 1
    for key in ("dataset", "data_dir", "test_dataset"):
        config[key] = _comparable(key, config[key])  # a run must find its data from any directory
    config["kl_schedule"] = _kl_schedule_spec(config["kl_schedule"])
    return config


def _kl_schedule_spec(spec):
    """--kl-schedule with every argument spelled out (the form config.json keeps), or None."""
    with flags.named(flags.KL_SCHEDULE):
        schedule = schedules.get(spec)
    return None if schedule is None else schedules.to_spec(schedule)


def _resume_config(config, args, done):
    """The run's config, after refusing flags that contradict it; --epochs may only grow."""
    config.setdefault("prior", DEFAULTS["prior"])  # runs written before --prior existed
    config.setdefault("kl_schedule", DEFAULTS["kl_schedule"])  # and before --kl-schedule
    # Runs written before diagnostics existed have no columns for them in history.csv.
    config.setdefault("diagnostics_every", 0)
    config.setdefault("diagnostics_samples", DEFAULTS["diagnostics_samples"])
    config.setdefault("condition", DEFAULTS["condition"])  # and before --condition
    for key in ("image_size", "test_dataset", "skip_bad_files"):  # and before streamed sources
        config.setdefault(key, DEFAULTS[key])
    missing = [key for key in DEFAULTS if key not in config]
    if missing:
        raise ValueError(f"{args.out}/{runs.CONFIG}: missing {', '.join(missing)}; not a config of tfvae train.")
    for key in DEFAULTS:
        given = getattr(args, key)
        if given is None:
            continue
        flag = "--" + key.replace("_", "-")
        if key == "epochs":
            if given < done:
                raise ValueError(f"{flag} {given}: the run has already trained {done} epochs.")
            config["epochs"] = given
        elif _comparable(key, given) != _comparable(key, config[key]):
            raise ValueError(
                f"{flag} {given} contradicts the run's {key} = {config[key]!r} in {args.out}/{runs.CONFIG}; "
                f"resume without {flag}, or start a new run with another --out."
            )
    return config


def _comparable(key, value):
    if key in ("dataset", "data_dir", "test_dataset") and value is not None and (key == "data_dir" or value not in
                                                                                  sources.BUNDLED):
        return os.path.abspath(value)
    if key == "image_size" and value is not None:
        return list(value)
    if key == "kl_schedule":
        return _kl_schedule_spec(value)
    return value


def _free_run_name(dataset):
    stem = re.sub(r"[^\w.-]", "", os.path.splitext(os.path.basename(os.path.normpath(dataset)))[0]) or "data"
    run, n = os.path.join("runs", stem), 1
    while os.path.exists(run):
        n += 1
        run = os.path.join("runs", f"{stem}-{n}")
    return run


def _load_checkpoint(path, config):
    """The model of a checkpoint with its optimizer state (moments, step count), if config.json describes it."""
    try:
        model = keras.models.load_model(path)
    except Exception as e:  # a checkpoint damaged outside tfvae (they are written atomically)
        raise ValueError(f"{path}: cannot load the checkpoint ({runs.brief(e)}); delete it to resume "
                         f"from the one before, if any.") from None
    # An edited config.json must not go on training a model it does not describe.
    if model.event_shape != tuple(config["input_shape"]):
        raise ValueError(f"{path}: its model takes x of shape {model.event_shape}; --dataset {config['dataset']} "
                         f"has images of shape {tuple(config['input_shape'])}.")
    if (model.condition_shape is None) != (config["condition"] is None):
        raise ValueError(f"{path}: its model is {'un' * (model.condition_shape is None)}conditional; the run's "
                         f"{runs.CONFIG} says condition = {config['condition']!r}.")
    if (latent_dim := model.get_config()["latent_dim"]) != config["latent_dim"]:  # a hierarchy's is a list
        raise ValueError(f"{path}: its model has latent_dim {latent_dim}; the run's {runs.CONFIG} says "
                         f"{config['latent_dim']}.")
    return model


def _keep_history_before(path, epochs_done):
    """Keeps the rows of history.csv for epochs < epochs_done: rows of an epoch cut short by a kill go."""
    if not os.path.exists(path):
        return
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    kept = [row for row in rows[1:] if len(row) == len(rows[0]) and row[0].isdigit() and int(row[0]) < epochs_done]
    if not kept:
        os.remove(path)
        return
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([rows[0], *kept])
    runs.write_text(path, text.getvalue())


def _describe(run, config, source, done):
    shape = "x".join(map(str, config["input_shape"]))
    epochs = config["epochs"]
    plan = f"epoch {done + 1} of {epochs}" if done else f"{epochs} epoch{'s' * (epochs != 1)}"
    if done >= epochs:  # killed after its last checkpoint, before model.keras was written
        plan = f"all {epochs} epochs trained, writing {runs.MODEL}"
    print(
        f"{'Resuming' if done else 'Training'} {run}: {config['dataset']} ({source.size('train')} train, "
        f"{source.size('test')} test, {shape}{_streamed(source)}), {config['architecture']} VAE, latent_dim {config['latent_dim']}, "
        f"{config['likelihood']} likelihood, {config['prior']} prior, {config['objective']} objective"
        f"{', KL schedule ' + config['kl_schedule'] if config['kl_schedule'] else ''}"
        f"{', conditioned on the labels' if config['condition'] else ''}; {plan}, "
        f"batch {config['batch_size']}.",
        flush=True,
    )


def _streamed(source):
    if source.kind == "bundled":
        return ""
    skipped = f", {source.skipped} unreadable skipped" if source.skipped else ""
    return f", {source.kind} streamed{skipped}"


def _drawable(images):
    try:
        plots.as_images(images)
    except ValueError:
        return False
    return True


def _summarize(run, history, tensorboard, pictures):
    rows = []
    if os.path.exists(history):
        with open(history, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    last = rows[-1] if rows else {}
    if "val_elbo" in last:
        print(f"Epoch {int(last['epoch']) + 1}: test ELBO {float(last['val_elbo']):.2f} nats per image.")
    diagnosed = [row for row in rows if row.get("val_log_likelihood", "NA") != "NA"]
    if diagnosed:
        row = diagnosed[-1]
        print(f"Epoch {int(row['epoch']) + 1}: test log-likelihood {float(row['val_log_likelihood']):.2f} nats per "
              f"image, {row['val_active_units']} active units.")
    files = [runs.MODEL, runs.HISTORY, runs.CONFIG] + ["samples.png", "reconstructions.png"] * pictures
    print(f"Wrote {os.path.join(run, '')}: {', '.join(files)}" + (", logs/" if tensorboard else "") + ".")
    if pictures:
        print(f"Pictures: {os.path.join(run, 'samples.png')} and {os.path.join(run, 'reconstructions.png')}.")
    if tensorboard:
        print(f"TensorBoard: tensorboard --logdir {os.path.join(run, 'logs')}")


class HistoryCSV(keras.callbacks.CSVLogger):
    """history.csv, appended to, with columns for `sometimes`, keys that not every epoch logs (diagnostics
    every N epochs): `CSVLogger` fixes its columns at the first epoch, and writes NA in a row that lacks
    one, as it does for Keras's validation every N epochs."""

    def __init__(self, path, sometimes=()):
        super().__init__(path, append=True)
        self.sometimes = list(sometimes)

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None:
            self.keys = sorted({*(logs or {}), *self.sometimes})
        super().on_epoch_end(epoch, logs)


class Checkpoint(keras.callbacks.Callback):
    """Saves checkpoints/epoch-NNNN.keras (weights and optimizer state) after every epoch, then
    removes the older ones, so a complete checkpoint exists at every moment."""

    def __init__(self, run):
        super().__init__()
        self.run = run

    def on_epoch_end(self, epoch, logs=None):
        runs.save_model(self.model, runs.checkpoint_path(self.run, epoch + 1))
        for done, path in runs.checkpoints(self.run):
            if done != epoch + 1:
                os.remove(path)
