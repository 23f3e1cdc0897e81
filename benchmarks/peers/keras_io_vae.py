"""keras.io-style peer for tfvae's throughput benchmark (Keras 3, TensorFlow backend).

The Burda et al. (2015) one-stochastic-layer VAE (encoder 784-200-200-(2x50) tanh, Gaussian
posterior by log-variance, N(0, I) prior with analytic KL, Bernoulli decoder 50-200-200-784 by
logits), written as the keras.io "Variational AutoEncoder" example writes it: encoder and decoder
sub-models, a `Sampling` layer, a `keras.Model` subclass with a `tf.GradientTape` `train_step` and
metric trackers, `compile(optimizer=keras.optimizers.Adam(1e-3))` and `fit(x, batch_size=100)`.
Compile and fit keep the example's defaults (steps_per_execution=1, no jit_compile).

    python benchmarks/peers/keras_io_vae.py --epochs 3 --repeats 3

Prints one JSON object; `run(...)` returns the same dict to `benchmarks/throughput.py`.
"""

import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers, ops  # noqa: E402

try:
    from . import _common
except ImportError:  # run as a script, or imported with benchmarks/peers on sys.path
    import _common

PEER = "keras.io"


class Sampling(layers.Layer):
    """Uses (z_mean, z_log_var) to sample z, the vector encoding an image."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        epsilon = keras.random.normal(shape=ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon


def build_encoder(x_dim, hidden=200, latent_dim=50):
    encoder_inputs = keras.Input(shape=(x_dim,))
    h = layers.Dense(hidden, activation="tanh")(encoder_inputs)
    h = layers.Dense(hidden, activation="tanh")(h)
    z_mean = layers.Dense(latent_dim, name="z_mean")(h)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(h)
    z = Sampling()([z_mean, z_log_var])
    return keras.Model(encoder_inputs, [z_mean, z_log_var, z], name="encoder")


def build_decoder(x_dim, hidden=200, latent_dim=50):
    latent_inputs = keras.Input(shape=(latent_dim,))
    h = layers.Dense(hidden, activation="tanh")(latent_inputs)
    h = layers.Dense(hidden, activation="tanh")(h)
    # Logits rather than the example's sigmoid: a Bernoulli likelihood computed stably.
    logits = layers.Dense(x_dim)(h)
    return keras.Model(latent_inputs, logits, name="decoder")


class VAE(keras.Model):
    def __init__(self, encoder, decoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
        self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_loss_tracker = keras.metrics.Mean(name="kl_loss")

    @property
    def metrics(self):
        return [self.total_loss_tracker, self.reconstruction_loss_tracker, self.kl_loss_tracker]

    def train_step(self, data):
        # Dynamic binarization: a fresh Bernoulli draw of the batch every step.
        data = tf.cast(tf.random.uniform(tf.shape(data)) < data, data.dtype)
        with tf.GradientTape() as tape:
            z_mean, z_log_var, z = self.encoder(data)
            logits = self.decoder(z)
            reconstruction_loss = ops.mean(
                ops.sum(ops.binary_crossentropy(data, logits, from_logits=True), axis=1))
            kl_loss = -0.5 * (1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var))
            kl_loss = ops.mean(ops.sum(kl_loss, axis=1))
            total_loss = reconstruction_loss + kl_loss
        grads = tape.gradient(total_loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        self.total_loss_tracker.update_state(total_loss)
        self.reconstruction_loss_tracker.update_state(reconstruction_loss)
        self.kl_loss_tracker.update_state(kl_loss)
        return {
            "loss": self.total_loss_tracker.result(),
            "reconstruction_loss": self.reconstruction_loss_tracker.result(),
            "kl_loss": self.kl_loss_tracker.result(),
        }


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch; epoch-level hooks only, so Keras still runs steps without per-step syncs."""

    def on_train_begin(self, logs=None):
        self.seconds, self.losses = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.losses.append(float(logs["loss"]))


def _train_once(x, epochs, batch_size, warmup_epochs):
    vae = VAE(build_encoder(x.shape[1]), build_decoder(x.shape[1]))
    vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    timer = EpochTimer()
    # verbose=0: a progress bar would interleave with the JSON on stdout.
    vae.fit(x, epochs=warmup_epochs + epochs, batch_size=batch_size, callbacks=[timer], verbose=0)
    timed = timer.seconds[warmup_epochs:]
    return {
        "examples_per_second": len(x) * epochs / sum(timed),
        "final_loss": timer.losses[-1],
        "epoch_seconds": timed,
    }


def run(x, epochs, batch_size=100, warmup_epochs=1, repeats=3, threads=None, seed=0):
    """Trains a fresh VAE `repeats` times with `model.fit` and returns training throughput and loss.

    Args:
        x: float array [N, D] in [0, 1]; binarized afresh inside every train_step.
        epochs: timed epochs per repeat.
        batch_size: examples per step.
        warmup_epochs: untimed epochs first (the first includes tracing the train function).
        repeats: independent runs, each with a fresh model; the medians summarize them.
        threads: TensorFlow intra- and inter-op threads, or None for TensorFlow's default (all
            cores). Settable only before TensorFlow's runtime starts.
        seed: `keras.utils.set_random_seed(seed + repeat)` for each repeat.

    Returns:
        dict with peer, examples_per_second_median, final_loss_median (mean negative ELBO per
        example in nats over the last epoch), runs (one dict per repeat: examples_per_second,
        final_loss, epoch_seconds), threads, versions, batch_size, epochs, warmup_epochs, examples.
    """
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"the keras.io peer needs KERAS_BACKEND=tensorflow, got {keras.backend.backend()}")
    x = _common.check_x(x, batch_size)
    if epochs < 1 or repeats < 1 or warmup_epochs < 0 or (threads is not None and threads < 1):
        raise ValueError(f"need epochs >= 1, repeats >= 1, warmup_epochs >= 0, threads >= 1 or None; "
                         f"got {epochs}, {repeats}, {warmup_epochs}, {threads}")
    if threads is not None and tf.config.threading.get_intra_op_parallelism_threads() != threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError as e:
            raise RuntimeError(f"threads={threads}: TensorFlow's thread pools already run; call run() "
                               "before any TensorFlow op, or pass threads=None") from e
    runs = []
    for repeat in range(repeats):
        keras.backend.clear_session()
        keras.utils.set_random_seed(seed + repeat)
        runs.append(_train_once(x, epochs, batch_size, warmup_epochs))
    versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
    return _common.summarize(PEER, runs, threads, versions, batch_size, epochs, warmup_epochs, len(x))


def main(argv=None):
    parser = _common.make_parser(
        __doc__.split("\n\n")[0], threads_default=None,
        threads_help="TensorFlow intra/inter-op threads (default: TensorFlow's own, all cores)")
    args = _common.parse_args(parser, argv)
    try:
        x = _common.check_x(_common.load_data(args.data, args.examples, args.seed), args.batch_size)
    except ValueError as e:
        parser.error(f"--examples/--data: {e}")
    _common.print_json(run(x, args.epochs, args.batch_size, args.warmup_epochs, args.repeats,
                           threads=args.threads, seed=args.seed))


if __name__ == "__main__":
    main()
