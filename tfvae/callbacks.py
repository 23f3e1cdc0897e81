"""Keras callbacks for VAE training."""

import keras

from tfvae import checks


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
