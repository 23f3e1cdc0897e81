"""Prior heads p(z): N(0, I), a learned mixture of Gaussians and the VampPrior (see `tfvae.heads`)."""

import math

import keras
import tensorflow as tf
from tensorflow_probability import distributions as tfd

from tfvae.heads import ops
from tfvae.heads.posteriors import diagonal_normal


@keras.saving.register_keras_serializable(package="tfvae")
class StandardNormal(keras.layers.Layer):
    """p(z) = N(0, I), without weights.

    Args:
        latent_dim: dimension of z.
    """

    def __init__(self, latent_dim, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = int(latent_dim)
        self.built = True  # nothing to build: p(z) has no weights

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim}

    def distribution(self):
        zeros = tf.zeros([self.latent_dim])
        return tfd.Independent(tfd.Normal(zeros, tf.ones_like(zeros)), reinterpreted_batch_ndims=1)


class GaussianMixture(tfd.MixtureSameFamily):
    """A TFP `MixtureSameFamily` whose `log_prob`, when its components are diagonal Gaussians, is one
    matrix product instead of TFP's broadcast over components.

    With precisions P = 1 / scale^2 [C, D], the quadratic form of z under every component c is

        sum_d (z_d - loc_cd)^2 P_cd = [z^2, z] @ [P, -2 loc P]^T + sum_d loc_cd^2 P_cd,

    so log p(z) for N samples is an [N, 2D] x [2D, C] GEMM and a log-sum-exp. TFP's form writes
    N x C x D elements: a VampPrior's 500 components made importance-sampled evaluation (K = 5000)
    spend ~80% of its time in log p(z). Other components (full covariance) keep TFP's form.
    """

    def _log_prob(self, z):
        normal = diagonal_normal(self.components_distribution)
        if normal is None or normal.loc.shape.rank != 2:  # not diagonal, or components batched themselves
            return super()._log_prob(z)
        loc, scale = normal.loc, normal.scale
        precision = tf.math.reciprocal(tf.square(scale))
        weights = tf.concat([-0.5 * precision, loc * precision], axis=-1)  # [C, 2D]
        log_normalizer = (
            tf.nn.log_softmax(self.mixture_distribution.logits_parameter())
            - 0.5 * tf.reduce_sum(tf.square(loc) * precision, axis=-1)
            - tf.reduce_sum(tf.math.log(scale), axis=-1)
            - 0.5 * math.log(2.0 * math.pi) * tf.cast(tf.shape(loc)[-1], loc.dtype)
        )  # [C]
        z = tf.convert_to_tensor(z, loc.dtype)
        features = tf.concat([tf.square(z), z], axis=-1)
        flat = tf.reshape(features, [-1, tf.shape(features)[-1]])
        log_components = tf.matmul(flat, weights, transpose_b=True) + log_normalizer  # [N, C]
        return tf.reshape(tf.reduce_logsumexp(log_components, axis=-1), tf.shape(z)[:-1])


@keras.saving.register_keras_serializable(package="tfvae")
class MixtureOfGaussians(keras.layers.Layer):
    """A learned prior p(z) = sum_c pi_c N(mu_c, diag(sigma_c^2)).

    KL(q || p) has no closed form here, so the model estimates it by Monte Carlo.

    Args:
        latent_dim: dimension of z.
        num_components: number of mixture components C.
        min_scale: smallest component standard deviation.
    """

    def __init__(self, latent_dim, num_components=10, min_scale=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = int(latent_dim)
        self.num_components = int(num_components)
        self.min_scale = float(min_scale)
        shape = (self.num_components, self.latent_dim)
        self.logits = self.add_weight(shape=(self.num_components,), initializer="zeros", name="logits")
        self.loc = self.add_weight(shape=shape, initializer="random_normal", name="loc")
        self.raw_scale = self.add_weight(
            shape=shape, initializer=keras.initializers.Constant(ops.UNIT_SOFTPLUS), name="raw_scale"
        )
        self.built = True  # the weights above are all of it

    def get_config(self):
        return {
            **super().get_config(),
            "latent_dim": self.latent_dim,
            "num_components": self.num_components,
            "min_scale": self.min_scale,
        }

    def distribution(self):
        scale = ops.softplus(self.raw_scale) + self.min_scale
        components = tfd.Independent(tfd.Normal(self.loc, scale), reinterpreted_batch_ndims=1)
        return GaussianMixture(tfd.Categorical(logits=self.logits), components)


@keras.saving.register_keras_serializable(package="tfvae")
class VampPrior(keras.layers.Layer):
    """The VampPrior p(z) = (1/C) sum_c q(z|u_c) (Tomczak & Welling 2018): the posteriors of C learned
    pseudo-inputs u_c, so the prior follows the encoder instead of pulling it towards N(0, I).

    The pseudo-inputs have x's shape and live in [0, 1], the range of image data: u = clip(w, 0, 1)
    (the authors' hardtanh), w initialized near 0.05 as in their code. `distribution(model)` encodes
    them with `model.posterior`; with a diagonal posterior the mixture's components are Independent
    Normals, which the exported samplers draw from. KL(q || p) is estimated by Monte Carlo.

    Args:
        latent_dim: dimension of z.
        event_shape: shape of one x, e.g. (784,) or (28, 28, 1).
        num_components: number of pseudo-inputs C.

    Example:
        >>> model = tfvae.VAE(input_shape=(784,), latent_dim=40, prior="vamp")  # C = 500
        >>> model.prior  # MixtureSameFamily of the pseudo-inputs' posteriors
    """

    def __init__(self, latent_dim, event_shape, num_components=500, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = int(latent_dim)
        self.event_shape = tuple(int(d) for d in event_shape)
        self.num_components = int(num_components)
        if self.num_components < 1:
            raise ValueError(f"num_components: expected an integer >= 1; got {num_components!r}.")
        self.raw_pseudo_inputs = self.add_weight(
            shape=(self.num_components, *self.event_shape),
            initializer=keras.initializers.RandomNormal(mean=0.05, stddev=0.01),
            name="pseudo_inputs",
        )
        self.built = True  # the pseudo-inputs are all of it; the networks are the model's

    def get_config(self):
        return {
            **super().get_config(),
            "latent_dim": self.latent_dim,
            "event_shape": list(self.event_shape),
            "num_components": self.num_components,
        }

    @property
    def pseudo_inputs(self):
        """u_c, [num_components, *event_shape], in [0, 1]."""
        return tf.clip_by_value(self.raw_pseudo_inputs, 0.0, 1.0)

    def distribution(self, model):
        uniform = tfd.Categorical(logits=tf.zeros([self.num_components]))
        return GaussianMixture(uniform, model.posterior(self.pseudo_inputs))


PRIORS = {"normal": StandardNormal, "mixture": MixtureOfGaussians, "vamp": VampPrior}
