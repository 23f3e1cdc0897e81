"""Keras callbacks for VAE training."""

import importlib.util
import math
import os
import shutil

import keras
import numpy as np
import tensorflow as tf
from tensorflow_probability import distributions as tfd

from tfvae import arguments, atomic, heads, evaluate, noise, plots, resources


class RestoreOnNaN(keras.callbacks.Callback):
    """Stops training with a `FloatingPointError` when the loss stops being finite, after restoring
    the weights and the optimizer's state (Adam's moments, the step count) from the start of that
    epoch, so the model is never left full of NaN and a later `fit` trains normally.

    Unlike `keras.callbacks.TerminateOnNaN`, which only stops, it raises and restores. `tfvae.VAE.fit`
    adds it to every fit.
    """

    def on_train_begin(self, logs=None):
        # Keras builds the optimizer's slots at the first step, after this: build them now (as that
        # step would) so that the first epoch's snapshot holds them.
        optimizer = self.model.optimizer
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._weights = self.model.get_weights()
        self._slots = [(v, v.numpy()) for v in self.model.optimizer.variables]

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not np.isfinite(loss):
            self.model.set_weights(self._weights)
            for variable, value in self._slots:
                variable.assign(value)
            self.model.stop_training = True
            raise FloatingPointError(
                f"training diverged: the loss became {loss} in epoch {self._epoch + 1} (batch {batch + 1}). "
                f"The weights and the optimizer's state from the start of that epoch were restored. Check the "
                f"data for extreme values, or lower the learning rate."
            )


class KLWarmup(keras.callbacks.Callback):
    """Ramps the KL weight beta linearly from 0 to `target` over the first `epochs` epochs.

    Early in training the KL term can pull every q(z|x) onto the prior before the decoder has
    learned to use z (posterior collapse); a warm-up lets reconstruction lead first.

    Args:
        epochs: epochs over which beta rises; from epoch `epochs` (0-based) on, beta = target.
        target: the final beta, 1 for the true ELBO.

    Example:
        >>> model.fit(x, epochs=20, callbacks=[tfvae.callbacks.KLWarmup(epochs=10)])
    """

    def __init__(self, epochs, target=1.0):
        super().__init__()
        self.epochs = arguments.positive_int(epochs, "epochs")
        self.target = float(target)

    def on_epoch_begin(self, epoch, logs=None):
        self.model.beta = self.target * min(1.0, epoch / self.epochs)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["beta"] = float(self.model.beta)


class BackupAndRestore(keras.callbacks.Callback):
    """Backs up the training state (weights, optimizer state) after every epoch and, when a `fit` that
    was cut short is started again with it, restores the state and goes on from the next epoch.

    Unlike `keras.callbacks.BackupAndRestore`, it is made for several workers: under a multi-worker
    strategy only the chief writes (`strategy.extended.should_checkpoint`), and every worker restores
    from the same directory (which must be shared: a network filesystem, or copied to each machine).
    Each backup is one file, `epoch-NNNN.weights.h5` after epoch NNNN, written to a temporary file and
    renamed into place; the older one is removed after, so a process killed at any moment leaves a
    complete backup. Training that ends normally removes the directory.

    Args:
        backup_dir: the directory of the backups, made if missing.
        delete_on_end: remove the directory when `fit` ends without an error.

    Example:
        >>> backup = tfvae.callbacks.BackupAndRestore("backup/run-1")
        >>> model.fit(dataset, epochs=20, callbacks=[backup])  # killed in epoch 7? Run it again.
    """

    def __init__(self, backup_dir, delete_on_end=True):
        super().__init__()
        if not isinstance(backup_dir, (str, os.PathLike)) or not os.fspath(backup_dir):
            raise ValueError(f"backup_dir: expected a directory path; got {backup_dir!r}.")
        self.backup_dir = os.fspath(backup_dir)
        self.delete_on_end = bool(delete_on_end)

    def backups(self):
        """(epochs done, path) of each complete backup, oldest first."""
        if not os.path.isdir(self.backup_dir):
            return []
        found = []
        for name in os.listdir(self.backup_dir):
            stem = name[: -len(_BACKUP_SUFFIX)] if name.endswith(_BACKUP_SUFFIX) else ""
            if stem.startswith("epoch-") and stem[6:].isdigit():
                found.append((int(stem[6:]), os.path.join(self.backup_dir, name)))
        return sorted(found)

    def on_train_begin(self, logs=None):
        backups = self.backups()
        if not backups:
            return
        done, path = backups[-1]
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:  # its slots must exist to be loaded
            optimizer.build(self.model.trainable_variables)
        self.model.load_weights(path)
        # Where Keras's own BackupAndRestore puts the epoch to go on from (Keras 3.15): `fit` reads it.
        self.model._initial_epoch = done

    def on_epoch_end(self, epoch, logs=None):
        if not self._writes():
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        path = os.path.join(self.backup_dir, f"epoch-{epoch + 1:04d}{_BACKUP_SUFFIX}")
        with atomic.atomic_path(path, suffix=_BACKUP_SUFFIX) as tmp:
            self.model.save_weights(tmp)
        for done, older in self.backups():
            if done != epoch + 1:
                os.remove(older)

    def on_train_end(self, logs=None):
        self.model._initial_epoch = None  # a later fit starts where it is told, as without the callback
        if self.delete_on_end and self._writes() and os.path.isdir(self.backup_dir):
            shutil.rmtree(self.backup_dir)

    def _writes(self):
        return self.model.distribute_strategy.extended.should_checkpoint


_BACKUP_SUFFIX = ".weights.h5"


class ImageGrids(keras.callbacks.Callback):
    """Writes `samples.png` and `reconstructions.png` every `every` epochs and when training ends.

    Samples are means of p(x|z) for the same z ~ p(z) every time (a fixed seed), so successive
    pictures show one set of codes decoded by an improving model. Reconstructions are drawn as rows
    of `x` alternating with rows of their reconstructions. Both grids can also go to TensorBoard.

    Args:
        directory: an existing directory for the two PNGs (`tfvae.plots.tile` gives their size).
        x: images to reconstruct, shape (n, *input_shape), e.g. 32 test images; None for samples only.
        num_samples: how many samples to draw.
        ncols: images per row.
        every: epochs between pictures.
        seed: the samples' seed.
        log_dir: if given, the grids also go to TensorBoard, as images `samples` and
            `reconstructions` under `log_dir/images`, stepped by epoch like `keras.callbacks.TensorBoard`.
        condition: for a conditional model, the conditions of `x`, one per image.
        sample_condition: for a conditional model, the condition the samples are drawn for: one
            (shape `condition_shape`) for every sample, or one per sample.

    Example:
        >>> model.fit(x, epochs=20, callbacks=[tfvae.callbacks.ImageGrids("runs/a", x=x_test[:32])])
        >>> # a model conditioned on one-hot labels: eight samples of each of ten classes
        >>> ImageGrids("runs/b", sample_condition=np.repeat(np.eye(10), 8, axis=0), num_samples=80)
    """

    def __init__(
        self, directory, x=None, num_samples=64, ncols=8, every=1, seed=0, log_dir=None, condition=None,
        sample_condition=None,
    ):
        super().__init__()
        self.directory = os.fspath(directory)
        self.x = x
        self.condition = condition
        self.sample_condition = sample_condition
        self.num_samples = arguments.positive_int(num_samples, "num_samples")
        self.ncols = arguments.positive_int(ncols, "ncols")
        self.every = arguments.positive_int(every, "every")
        self.seed = int(seed)
        if log_dir is not None and importlib.util.find_spec("tensorboard") is None:
            raise ImportError("log_dir: TensorBoard images need the tensorboard package (pip install tensorboard).")
        self.log_dir = log_dir
        self._writer = None
        self._epoch = self._drawn = None

    def on_train_begin(self, logs=None):
        # The folder, x and the conditions are checked before the first epoch, not after it.
        if not os.path.isdir(self.directory):
            what = "a file" if os.path.exists(self.directory) else "not found"
            raise NotADirectoryError(f"directory: expected an existing directory for the grids; got "
                                     f"{self.directory!r}, {what}.")
        self.model.as_sample_condition(self.sample_condition, self.num_samples, name="sample_condition")
        if self.x is not None:
            self.model.as_condition(self.condition, len(self.model.as_input(self.x, "x")), name="condition")

    def on_epoch_end(self, epoch, logs=None):
        self._epoch = epoch
        if (epoch + 1) % self.every == 0:
            self.draw(epoch)

    def on_train_end(self, logs=None):
        if self._epoch is not None and self._epoch != self._drawn:
            self.draw(self._epoch)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def draw(self, epoch=None):
        """Writes the grids for the model as it is now; `epoch` (0-based) is the TensorBoard step."""
        samples = self.model.sample(self.num_samples, seed=self.seed, condition=self.sample_condition)
        grids = {"samples": np.asarray(samples)}
        if self.x is not None:
            reconstructions = self.model.reconstruct(self.x, self.condition)
            grids["reconstructions"] = plots.interleave(self.x, reconstructions, self.ncols)
        for name, images in grids.items():
            plots.image_grid(images, os.path.join(self.directory, f"{name}.png"), ncols=self.ncols)
        if self.log_dir is not None and epoch is not None:
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "images"))
            with self._writer.as_default():
                for name, images in grids.items():
                    tf.summary.image(name, plots.tile(images, self.ncols)[np.newaxis], step=epoch)
            self._writer.flush()
        self._drawn = epoch


class Diagnostics(keras.callbacks.Callback):
    """Every `every` epochs, measures on held-out `x` how the model uses its latent code and how good
    it is, and logs it, so the numbers land in `History` (and `CSVLogger`, `TensorBoard` after it):

    - `val_kl_0` ... `val_kl_{latent_dim-1}`: E_x KL(q(z_d|x) || p(z_d)), the KL of each latent
      dimension's marginals, in nats. A dimension near 0 carries no information about x.
    - `val_active_units`: the units with Var_x(E_q[z_d|x]) > threshold (`tfvae.evaluate.active_units`).
    - for a hierarchy, `val_active_units_z1` ... and `val_kl_z1` ...: each layer's active units and KL
      (`tfvae.objectives.layer_kl`), bottom first.
    - `val_log_likelihood`: the importance-sampled log p(x) with K = num_samples, in nats
      (`tfvae.evaluate.log_likelihood`).
    - `val_unreliable_fraction`: the share of those per-example estimates that the reliability flag
      marks (`tfvae.evaluate.unreliable`): rising, it says K no longer suffices for this model.

    The per-dimension KL is analytic for Gaussian marginals on both sides (a diagonal or full-covariance
    posterior, the standard normal prior), and a Monte Carlo estimate with `num_samples` draws of each
    z_d when p(z_d) is a mixture of Gaussians (the mixture and VampPrior priors). With a diagonal
    posterior and a factorized prior the dimensions' KLs sum to the model's KL; otherwise their sum
    leaves out the dependence between dimensions (for a full-covariance posterior, q's total
    correlation). For a posterior or prior whose marginals are neither, the `val_kl_d` entries are left
    out. The noise is the model's, and its seed generator is put back afterwards: training draws the
    same noise with the callback as without.

    Diagnosed epochs are those with (epoch + 1) % every == 0 (0-based epochs, as `initial_epoch` counts
    them); other epochs log none of these keys, as Keras's `validation_freq` leaves out `val_` keys.
    `CSVLogger` fixes its columns at the first epoch, so with `every > 1` give it the keys first (see
    `keys`) or diagnosed rows lose them.

    Args:
        x: held-out examples, shape (n, *input_shape), checked like the model's inputs, e.g. 1000
            test images.
        condition: for a conditional model, the conditions of x, one row per example (then every
            number is of q(z|x, c) and log p(x|c)); None for an unconditional one.
        every: epochs between diagnoses.
        num_samples: K, importance samples per example for the log-likelihood (and draws per example
            for a Monte Carlo KL).
        threshold: the variance of E_q[z_d|x] above which a unit is active, >= 0.
        batch_size: examples per batch.
        log_dir: if given, the numbers also go to TensorBoard under `log_dir/diagnostics` (scalars
            `log_likelihood`, `unreliable_fraction`, `active_units`, `kl/d` and the histogram `kl`), stepped by epoch like
            `keras.callbacks.TensorBoard`.

    Example:
        >>> diagnostics = tfvae.callbacks.Diagnostics(x_test[:1000], every=5, num_samples=100)
        >>> history = model.fit(x_train, epochs=20, callbacks=[diagnostics])
        >>> history.history["val_active_units"]  # epochs 5, 10, 15, 20
    """

    def __init__(self, x, every=1, num_samples=100, threshold=0.01, batch_size=100, log_dir=None, condition=None):
        super().__init__()
        if x is None:
            raise ValueError("x: expected held-out examples, an array of shape (n, *input_shape); got None.")
        self.x = x
        self.condition = condition
        self.every = arguments.positive_int(every, "every")
        self.num_samples = arguments.positive_int(num_samples, "num_samples")
        self.threshold = arguments.finite_float(threshold, "threshold", inclusive=True)
        self.batch_size = arguments.batch_size(batch_size)
        if log_dir is not None and importlib.util.find_spec("tensorboard") is None:
            raise ImportError("log_dir: TensorBoard scalars need the tensorboard package (pip install tensorboard).")
        self.log_dir = log_dir
        self._writer = None
        self._checked = self._checked_condition = None

    def keys(self, model=None):
        """The keys a diagnosed epoch logs for `model` (default: the model being fitted)."""
        model = model if model is not None else self.model
        dimensions = [f"val_kl_{d}" for d in range(model.latent_dim)] if _marginals_known(model) else []
        layers = range(1, len(model.latent_dims) + 1) if len(model.latent_dims) > 1 else []
        layers = [f"val_{key}_z{i}" for i in layers for key in ("active_units", "kl")]
        return ["val_log_likelihood", "val_unreliable_fraction", "val_active_units", *layers, *dimensions]

    def set_model(self, model):
        super().set_model(model)
        self._checked = self._checked_condition = None  # x and c as the previous model checked them

    def on_train_begin(self, logs=None):
        # Checked once per fit, before the first epoch's work, so a bad x fails at once.
        self._checked = self.model.as_input(self.x, "x")  # refuses an empty x too
        self._checked_condition = self.model.as_condition(self.condition, self._checked.shape[0])
        samples = self.num_samples * math.prod(self.model.event_shape)
        resources.check_step(samples, f"num_samples={self.num_samples} (per example)")

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        values = self.diagnose()
        if logs is not None:
            logs.update(values)
        if self.log_dir is not None:
            self._write(values, epoch)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def diagnose(self):
        """The diagnostics of the model as it is now: a dict of the `keys` with their float values."""
        x, c = self._checked, self._checked_condition
        if x is None:
            x = self.model.as_input(self.x, "x")
            c = self.model.as_condition(self.condition, x.shape[0])
        state = self.model.seed_generator.state
        saved = state.numpy()
        try:
            log_likelihood = evaluate.log_likelihood(self.model, x, self.num_samples, self.batch_size, verbose=0,
                                                     condition=c)
            active = evaluate.active_units(self.model, x, self.threshold, self.batch_size, condition=c)
            values = {
                "val_log_likelihood": log_likelihood["log_likelihood"],
                "val_unreliable_fraction": log_likelihood["unreliable_fraction"],
                "val_active_units": int(np.sum(active)),
            }
            if len(self.model.latent_dims) > 1:  # a hierarchy's layers, bottom first
                values.update({f"val_active_units_z{i}": n for i, n in enumerate(active, 1)})
                values.update({f"val_{name}": value for name, value in log_likelihood.items() if name.startswith("kl_z")})
            kl = kl_per_dimension(self.model, x, self.num_samples, self.batch_size, c)
        finally:
            state.assign(saved)
        if kl is not None:
            values.update({f"val_kl_{d}": float(value) for d, value in enumerate(kl)})
        return values

    def _write(self, values, epoch):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "diagnostics"))
        kl = [value for key, value in values.items() if key.startswith("val_kl_")]
        with self._writer.as_default(step=epoch):
            tf.summary.scalar("log_likelihood", values["val_log_likelihood"])
            tf.summary.scalar("unreliable_fraction", values["val_unreliable_fraction"])
            tf.summary.scalar("active_units", values["val_active_units"])
            for d, value in enumerate(kl):
                tf.summary.scalar(f"kl/{d}", value)
            if kl:
                tf.summary.histogram("kl", np.asarray(kl), buckets=len(kl))
        self._writer.flush()


def kl_per_dimension(model, x, num_samples=100, batch_size=100, condition=None):
    """E_x KL(q(z_d|x) || p(z_d)) for each latent dimension d, from the marginals of q and p, in nats.

    Analytic when both marginals are Gaussian; a Monte Carlo estimate with `num_samples` draws of
    each z_d (the model's noise) when p(z_d) is a mixture of Gaussians. See `Diagnostics`.

    Args:
        model: a `tfvae.VAE`.
        x: a batch [N, *input_shape], N >= 1, checked like the model's inputs.
        num_samples: draws per example for a Monte Carlo estimate.
        batch_size: examples per batch.
        condition: a conditional model's conditions of x, one row per example, else None.

    Returns:
        A float64 numpy array [latent_dim], or None when q's or p's marginals are not Gaussian or
        mixtures of Gaussians.
    """
    x = model.as_input(x, "x")  # refuses an empty x too
    condition = model.as_condition(condition, x.shape[0])
    num_samples = arguments.positive_int(num_samples, "num_samples")
    batch_size = arguments.batch_size(batch_size)
    if not _marginals_known(model):
        return None
    log_weights, p_loc, p_scale = _marginals(model.prior)
    if log_weights is not None:
        # One chunk's [K, B, latent_dim, C] densities stay near objectives' chunk of decoder outputs.
        per_example = num_samples * model.latent_dim * int(log_weights.shape[0])
        batch_size = max(1, min(batch_size, 2**23 // per_example))

    def batch_kl(q_loc, q_scale):  # [B, latent_dim]
        if log_weights is None:
            return _normal_kl(q_loc, q_scale, p_loc, p_scale)
        eps = noise.standard_normal((num_samples, tf.shape(q_loc)[0], model.latent_dim), model.seed_generator.next())
        return _mixture_kl(q_loc, q_scale, log_weights, p_loc, p_scale, q_loc + q_scale * eps)

    total = np.zeros(model.latent_dim)
    for start in range(0, x.shape[0], batch_size):
        c = None if condition is None else condition[start : start + batch_size]
        _, q_loc, q_scale = _marginals(model.posterior(x[start : start + batch_size], c))
        total += tf.reduce_sum(batch_kl(q_loc, q_scale), axis=0).numpy().astype(np.float64)
    return total / x.shape[0]


def _marginals_known(model):
    """Whether `kl_per_dimension` answers for the model: q's marginals Gaussian, p's Gaussian or mixtures of them."""
    c = None if model.condition_shape is None else tf.zeros((1, *model.condition_shape))
    q = _marginals(model.posterior(tf.zeros((1, *model.event_shape)), c))
    return q is not None and q[0] is None and _marginals(model.prior) is not None


def _marginals(distribution):
    """Each dimension's marginal as (log mixture weights [C] or None for one Gaussian, loc, scale), loc and
    scale [..., latent_dim] ([C, latent_dim] for a mixture); None when they are not Gaussian or a mixture."""
    diagonal = heads.diagonal_normal(distribution) is not None
    if diagonal or isinstance(distribution, tfd.MultivariateNormalLinearOperator):
        return None, distribution.mean(), distribution.stddev()
    if isinstance(distribution, tfd.MixtureSameFamily):
        components = _marginals(distribution.components_distribution)
        if components is not None and components[0] is None:
            log_weights = tf.math.log_softmax(distribution.mixture_distribution.logits_parameter())
            return log_weights, components[1], components[2]
    return None


def _normal_kl(q_loc, q_scale, p_loc, p_scale):
    """KL(N(q_loc, q_scale^2) || N(p_loc, p_scale^2)) elementwise."""
    squared_distance = tf.square(q_scale) + tf.square(q_loc - p_loc)
    return tf.math.log(p_scale / q_scale) + squared_distance / (2 * tf.square(p_scale)) - 0.5


def _mixture_kl(q_loc, q_scale, log_weights, p_loc, p_scale, z):
    """Monte Carlo KL(N(q_loc, q_scale^2) || sum_c w_c N(p_loc_c, p_scale_c^2)) per dimension, from
    z [K, B, latent_dim] drawn from q: the mean over K of log q(z_d) - log p(z_d), [B, latent_dim]."""
    log_q = tfd.Normal(q_loc, q_scale).log_prob(z)
    # [K, B, latent_dim, C]: each z_d under each component's marginal in that dimension.
    log_components = tfd.Normal(tf.transpose(p_loc), tf.transpose(p_scale)).log_prob(z[..., None])
    log_p = tf.reduce_logsumexp(log_components + log_weights, axis=-1)
    return tf.reduce_mean(log_q - log_p, axis=0)
