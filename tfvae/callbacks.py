"""Keras callbacks for VAE training."""

import importlib.util
import os

import keras
import numpy as np
import tensorflow as tf

from tfvae import checks, plots


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
        self.epochs = checks.positive_int(epochs, "epochs")
        self.target = float(target)

    def on_epoch_begin(self, epoch, logs=None):
        self.model.beta = self.target * min(1.0, epoch / self.epochs)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["beta"] = float(self.model.beta)


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

    Example:
        >>> model.fit(x, epochs=20, callbacks=[tfvae.callbacks.ImageGrids("runs/a", x=x_test[:32])])
    """

    def __init__(self, directory, x=None, num_samples=64, ncols=8, every=1, seed=0, log_dir=None):
        super().__init__()
        self.directory = os.fspath(directory)
        self.x = x
        self.num_samples = checks.positive_int(num_samples, "num_samples")
        self.ncols = checks.positive_int(ncols, "ncols")
        self.every = checks.positive_int(every, "every")
        self.seed = int(seed)
        if log_dir is not None and importlib.util.find_spec("tensorboard") is None:
            raise ImportError("log_dir: TensorBoard images need the tensorboard package (pip install tensorboard).")
        self.log_dir = log_dir
        self._writer = None
        self._epoch = self._drawn = None

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
        grids = {"samples": np.asarray(self.model.sample(self.num_samples, seed=self.seed))}
        if self.x is not None:
            grids["reconstructions"] = plots.interleave(self.x, self.model.reconstruct(self.x), self.ncols)
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
