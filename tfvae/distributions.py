"""Heads that turn network outputs into TFP distributions.

Three families, one registry each:

- posteriors q(z|x): a layer maps encoder features to parameters, `distribution(params)` builds q;
- priors p(z): `distribution()` builds p from the head's own (possibly learned) weights;
- likelihoods p(x|z): a layer maps decoder features to parameters, `distribution(params)` builds p.

Every distribution has batch shape [B] and one event per example, so `log_prob` gives one
number (in nats) per example. A new head is one class here and one line in its registry.
"""

import math

import keras
import numpy as np
import tensorflow as tf
from tensorflow_probability import distributions as tfd
from tensorflow_probability import math as tfp_math

# softplus(raw) = 1 at this raw value: heads start at unit scale.
_UNIT_SOFTPLUS = math.log(math.e - 1.0)


def _float32(params):
    """Distribution parameters in float32, whatever the layers compute in (e.g. mixed_bfloat16):
    log-densities, and so the loss, keep float32 precision."""
    return tf.cast(params, tf.float32)


def _flatten_features(h):
    """Encoder bodies may end in feature maps; the posterior needs one vector per example."""
    if len(h.shape) == 2:
        return h
    return keras.ops.reshape(h, (-1, int(np.prod(h.shape[1:]))))


@keras.saving.register_keras_serializable(package="tfvae")
class DiagonalGaussian(keras.layers.Layer):
    """q(z|x) = N(loc, diag(scale^2)), with scale = softplus(raw) + min_scale.

    The floor keeps log q finite when the encoder drives a scale towards zero.

    Args:
        latent_dim: dimension of z.
        min_scale: smallest standard deviation q may have.

    Example:
        >>> head = DiagonalGaussian(latent_dim=2)
        >>> q = head.distribution(head(features))  # Independent(Normal), event [2]
    """

    def __init__(self, latent_dim, min_scale=1e-4, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = int(latent_dim)
        self.min_scale = float(min_scale)
        self.dense = keras.layers.Dense(2 * self.latent_dim, name="params")

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim, "min_scale": self.min_scale}

    def call(self, h):
        return _float32(self.dense(_flatten_features(h)))

    def distribution(self, params):
        loc, raw_scale = tf.split(params, 2, axis=-1)
        scale = tf.nn.softplus(raw_scale) + self.min_scale
        return tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)

    def reparameterize(self, q, eps):
        """z = loc + scale * eps: a differentiable function of q's parameters."""
        return q.mean() + q.stddev() * eps


@keras.saving.register_keras_serializable(package="tfvae")
class FullCovarianceGaussian(keras.layers.Layer):
    """q(z|x) = N(loc, L L^T), L lower triangular with softplus(raw) + min_scale on its diagonal.

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

    def call(self, h):
        return _float32(self.dense(_flatten_features(h)))

    def distribution(self, params):
        loc, raw_tril = params[..., : self.latent_dim], params[..., self.latent_dim :]
        tril = tfp_math.fill_triangular(raw_tril)
        # The diagonal through a mask, not tf.linalg.diag_part: TFLite has no builtin for MatrixDiagPart.
        eye = tf.eye(self.latent_dim)
        diagonal = tf.nn.softplus(tf.reduce_sum(tril * eye, axis=-1)) + self.min_scale
        return tfd.MultivariateNormalTriL(loc, tril * (1.0 - eye) + eye * diagonal[..., None, :])

    def reparameterize(self, q, eps):
        """z = loc + L eps."""
        return q.mean() + tf.linalg.matvec(q.scale.to_dense(), eps)


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
            shape=shape, initializer=keras.initializers.Constant(_UNIT_SOFTPLUS), name="raw_scale"
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
        scale = tf.nn.softplus(self.raw_scale) + self.min_scale
        components = tfd.Independent(tfd.Normal(self.loc, scale), reinterpreted_batch_ndims=1)
        return tfd.MixtureSameFamily(tfd.Categorical(logits=self.logits), components)


class _Likelihood(keras.layers.Layer):
    """Maps decoder features to one parameter per element of x (shape `event_shape`).

    Flat features get a dense layer to prod(event_shape) values; feature maps whose spatial shape
    already matches x (a convolutional decoder) get a dense layer over channels only.
    """

    def __init__(self, event_shape, **kwargs):
        super().__init__(**kwargs)
        self.event_shape = tuple(int(d) for d in event_shape)

    def get_config(self):
        return {**super().get_config(), "event_shape": list(self.event_shape)}

    def build(self, input_shape):
        spatial = tuple(input_shape[1:-1])
        if len(input_shape) > 2 and spatial == self.event_shape[:-1]:
            self.dense = keras.layers.Dense(self.event_shape[-1], name="params")
        elif len(input_shape) == 2:
            self.dense = keras.layers.Dense(int(np.prod(self.event_shape)), name="params")
        else:
            raise ValueError(
                f"decoder: expected features of shape (batch, units) or (batch, *{self.event_shape[:-1]}, "
                f"channels) to produce x of shape {self.event_shape}; got {tuple(input_shape)}."
            )
        self.dense.build(input_shape)

    def call(self, h):
        return keras.ops.reshape(_float32(self.dense(h)), (-1, *self.event_shape))

    def _independent(self, distribution):
        return tfd.Independent(distribution, reinterpreted_batch_ndims=len(self.event_shape))

    def check_support(self, x, name="x"):
        """Raises ValueError if numpy data `x` holds values this likelihood gives zero density."""

    def in_support(self, x):
        """The graph form of `check_support`: a bool tensor of x's shape, True where this likelihood
        gives x nonzero density (the exported signatures refuse x where it is False)."""
        return tf.ones_like(x, dtype=tf.bool)


class _BernoulliLogits(tfd.Bernoulli):
    """tfd.Bernoulli whose log_prob is x * logits - softplus(logits).

    That is x log sigmoid(l) + (1 - x) log(1 - sigmoid(l)) with one softplus instead of TFP's two
    and no guarded products: the same value for finite logits (also for grey x in [0, 1]), and
    the likelihood is most of a small VAE's elementwise work per step.
    """

    def _log_prob(self, event):
        logits = tf.convert_to_tensor(self._logits)
        return tf.cast(event, logits.dtype) * logits - tf.nn.softplus(logits)


@keras.saving.register_keras_serializable(package="tfvae")
class Bernoulli(_Likelihood):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(logits_i)), parameterized by logits for stability.

    Grey values in [0, 1] are scored as the cross-entropy (the continuous relaxation used for
    non-binarized images); binarize the data for a proper discrete likelihood.

    Args:
        event_shape: shape of one x, e.g. (784,) or (28, 28, 1).
    """

    def distribution(self, logits):
        return self._independent(_BernoulliLogits(logits=logits, dtype=tf.float32))

    def check_support(self, x, name="x"):
        low, high = float(np.min(x)), float(np.max(x))
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{name}: the Bernoulli likelihood expects values in [0, 1]; got values in "
                f"[{low:g}, {high:g}]. Scale the data (e.g. divide 8-bit images by 255) or use "
                f"likelihood='gaussian'."
            )

    def in_support(self, x):
        # x equals itself clipped to [0, 1] exactly when 0 <= x <= 1 (never for NaN): one comparison,
        # cheaper in LiteRT than two and a logical and.
        return tf.equal(tf.clip_by_value(x, 0.0, 1.0), x)


@keras.saving.register_keras_serializable(package="tfvae")
class Gaussian(_Likelihood):
    """p(x|z) = prod_i N(x_i; loc_i(z), scale_i), one learned scale per element of x.

    Args:
        event_shape: shape of one x.
        min_scale: smallest standard deviation; keeps log p bounded on constant pixels.
    """

    def __init__(self, event_shape, min_scale=1e-3, **kwargs):
        super().__init__(event_shape, **kwargs)
        self.min_scale = float(min_scale)
        self.raw_scale = self.add_weight(
            shape=self.event_shape, initializer=keras.initializers.Constant(_UNIT_SOFTPLUS), name="raw_scale"
        )

    def get_config(self):
        return {**super().get_config(), "min_scale": self.min_scale}

    def distribution(self, loc):
        scale = tf.nn.softplus(self.raw_scale) + self.min_scale
        return self._independent(tfd.Normal(loc, scale))


POSTERIORS = {"diagonal": DiagonalGaussian, "full": FullCovarianceGaussian}
PRIORS = {"normal": StandardNormal, "mixture": MixtureOfGaussians}
LIKELIHOODS = {"bernoulli": Bernoulli, "gaussian": Gaussian}


def get(registry, spec, argument, **kwargs):
    """Returns the head named `spec` in `registry` built with `kwargs`, or `spec` itself if it is a head.

    Args:
        registry: one of POSTERIORS, PRIORS, LIKELIHOODS.
        spec: a registered name or an instance of a registered class.
        argument: the user-facing argument name, for error messages.
        **kwargs: constructor arguments for a named head.
    """
    if isinstance(spec, str):
        if spec not in registry:
            raise ValueError(f"{argument}: expected one of {sorted(registry)}; got {spec!r}.")
        return registry[spec](**kwargs)
    if isinstance(spec, tuple(registry.values())):
        return spec
    raise TypeError(
        f"{argument}: expected one of {sorted(registry)} or an instance of "
        f"{', '.join(c.__name__ for c in registry.values())}; got {type(spec).__name__}."
    )


@tfd.RegisterKL(tfd.MultivariateNormalLinearOperator, tfd.Independent)
def _kl_multivariate_normal_independent_normal(a, b, name=None):
    """KL(MVN || Independent(Normal)): the same math as two MVNs, which TFP registers.

    TFP registers KL only within one form; a full-covariance posterior against the standard
    normal prior mixes them, and without this it would fall back to a noisier Monte Carlo KL.
    """
    if not (isinstance(b.distribution, tfd.Normal) and tf.get_static_value(b.reinterpreted_batch_ndims) == 1):
        raise NotImplementedError("KL(MultivariateNormal || Independent) needs an Independent Normal.")
    as_mvn = tfd.MultivariateNormalDiag(b.distribution.loc, b.distribution.scale)
    return tfd.kl_divergence(a, as_mvn, name=name)
