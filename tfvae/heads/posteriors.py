"""Posterior heads q(z|x): the diagonal and the full-covariance Gaussian (see `tfvae.heads` for the protocol)."""

import math

import keras
import tensorflow as tf
from tensorflow_probability import distributions as tfd
from tensorflow_probability import math as tfp_math

from tfvae.heads import ops


@keras.saving.register_keras_serializable(package="tfvae")
class DiagonalGaussian(keras.layers.Layer):
    """q(z|x) = N(loc, diag(scale^2)), with scale = softplus(raw) + min_scale, or with the encoder's
    raw output read as a log-variance clipped to `log_variance_range`.

    The floor keeps log q finite when the encoder drives a scale towards zero. The clipped
    log-variance, scale = exp(clip(raw, low, high) / 2), is the parameterization of the VampPrior and
    Exemplar VAE authors' code (a Hardtanh(-6, 2) on log sigma^2): its gradient is 0 outside the range.

    Args:
        latent_dim: dimension of z.
        min_scale: smallest standard deviation q may have (softplus form).
        log_variance_range: (low, high) to use the clipped log-variance form instead, e.g. (-6, 2);
            None for softplus.

    Example:
        >>> head = DiagonalGaussian(latent_dim=2)
        >>> q = head.distribution(head(features))  # Independent(Normal), event [2]
    """

    def __init__(self, latent_dim, min_scale=1e-4, log_variance_range=None, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = int(latent_dim)
        self.min_scale = float(min_scale)
        self.log_variance_range = _log_variance_range(log_variance_range)
        self.dense = keras.layers.Dense(2 * self.latent_dim, name="params")

    def get_config(self):
        return {
            **super().get_config(),
            "latent_dim": self.latent_dim,
            "min_scale": self.min_scale,
            "log_variance_range": self.log_variance_range,
        }

    def build(self, input_shape):
        # Built from the shape, so a loaded model's head has its weights before they are read
        # (without it Keras warns on every load that the layer "has unbuilt state").
        self.dense.build(_flat_shape(input_shape))

    def call(self, h):
        return ops.as_float32(self.dense(ops.flatten_features(h)))

    def distribution(self, params):
        loc, raw_scale = tf.split(params, 2, axis=-1)
        if self.log_variance_range is None:
            scale = ops.softplus(raw_scale) + self.min_scale
        else:
            scale = tf.exp(0.5 * tf.clip_by_value(raw_scale, *self.log_variance_range))
        return tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)


def _flat_shape(input_shape):
    """The shape `ops.flatten_features` gives features of `input_shape`: (batch, their product)."""
    rest = tuple(input_shape[1:])
    return (input_shape[0], None if None in rest else math.prod(rest))


def _log_variance_range(value):
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        low = high = None
    if low is None or not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"log_variance_range: expected (low, high), finite numbers with low < high; got {value!r}.")
    return [low, high]


@keras.saving.register_keras_serializable(package="tfvae")
class FullCovarianceGaussian(keras.layers.Layer):
    """q(z|x) = N(loc, L L^T), L lower triangular with softplus(raw) + min_scale on its diagonal.

    Its hooks are written in ops TFLite has builtins for, and are the only forms tfvae uses, in
    training and in exports alike: no MatrixDiagPart (the diagonal through a mask) and no
    triangular solve (log q from the noise that made z).

    Args:
        latent_dim: dimension of z.
        min_scale: smallest value on the diagonal of L.
    """

    def __init__(self, latent_dim, min_scale=1e-4, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = int(latent_dim)
        self.min_scale = float(min_scale)
        tril_size = self.latent_dim * (self.latent_dim + 1) // 2
        self.dense = keras.layers.Dense(self.latent_dim + tril_size, name="params")

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim, "min_scale": self.min_scale}

    def build(self, input_shape):
        # Built from the shape, so a loaded model's head has its weights before they are read
        # (without it Keras warns on every load that the layer "has unbuilt state").
        self.dense.build(_flat_shape(input_shape))

    def call(self, h):
        return ops.as_float32(self.dense(ops.flatten_features(h)))

    def distribution(self, params):
        loc, raw_tril = params[..., : self.latent_dim], params[..., self.latent_dim :]
        tril = tfp_math.fill_triangular(raw_tril)
        eye = tf.eye(self.latent_dim)
        diagonal = ops.softplus(tf.reduce_sum(tril * eye, axis=-1)) + self.min_scale
        return tfd.MultivariateNormalTriL(loc, tril * (1.0 - eye) + eye * diagonal[..., None, :])

    def reparameterize(self, q, eps):
        """z = loc + L eps."""
        return q.mean() + tf.linalg.matvec(q.scale.to_dense(), eps)

    def log_prob(self, q, z, eps):
        """log q(z|x) = log N(eps; 0, I) - log |det L| for z = loc + L eps."""
        log_normal = -0.5 * tf.reduce_sum(tf.square(eps), axis=-1) - 0.5 * self.latent_dim * math.log(2 * math.pi)
        return log_normal - _log_abs_det(q.scale.to_dense())

    def stddev(self, q):
        """The row norms of L: the square roots of the diagonal of L L^T."""
        return tf.sqrt(tf.reduce_sum(tf.square(q.scale.to_dense()), axis=-1))


def _log_abs_det(tril):
    """log |det L| of lower-triangular matrices: the sum of log |L_ii|, the diagonal through a mask."""
    diagonal = tf.reduce_sum(tril * tf.eye(tril.shape[-1]), axis=-1)
    return tf.reduce_sum(tf.math.log(tf.abs(diagonal)), axis=-1)


def diagonal_normal(distribution):
    """The `tfd.Normal` of a diagonal Gaussian, `Independent(Normal)` over one event dimension, with its
    loc and scale broadcast to one shape; None for any other distribution. The GEMM mixture density,
    the diagonal-to-full KL, export's prior sampling and the per-dimension KL read Gaussians through it."""
    if not (
        isinstance(distribution, tfd.Independent)
        and isinstance(distribution.distribution, tfd.Normal)
        and tf.get_static_value(distribution.reinterpreted_batch_ndims) == 1
    ):
        return None
    normal = distribution.distribution
    return tfd.Normal(normal.mean(), normal.stddev())


@tfd.RegisterKL(tfd.MultivariateNormalLinearOperator, tfd.Independent)
def _kl_multivariate_normal_independent_normal(a, b, name=None):
    """KL(N(m, L L^T) || N(mu, diag(s^2))) = 0.5 (tr + mahalanobis - d) + sum log s - log |det L|.

    TFP registers KL only within one form; a full-covariance posterior against the standard
    normal prior mixes them, and without this it would fall back to a noisier Monte Carlo KL.
    Written without a triangular solve or MatrixDiagPart, so it also runs on TFLite's builtins.
    """
    normal = diagonal_normal(b)
    if normal is None:
        raise NotImplementedError("KL(MultivariateNormal || Independent) needs an Independent Normal.")
    loc, scale = normal.loc, normal.scale
    tril = a.scale.to_dense()
    trace = tf.reduce_sum(tf.square(tril / scale[..., :, None]), axis=[-2, -1])
    mahalanobis = tf.reduce_sum(tf.square((a.mean() - loc) / scale), axis=-1)
    log_det_ratio = tf.reduce_sum(tf.math.log(scale), axis=-1) - _log_abs_det(tril)
    return 0.5 * (trace + mahalanobis - tf.cast(tril.shape[-1], tril.dtype)) + log_det_ratio


POSTERIORS = {"diagonal": DiagonalGaussian, "full": FullCovarianceGaussian}
