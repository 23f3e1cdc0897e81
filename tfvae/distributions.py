"""Heads: the layers that turn network outputs into the model's three TFP distributions.

The head protocol. A head is any `keras.layers.Layer` with these methods; tfvae's own heads below
follow it, and a user's head is accepted the same way, registered with tfvae or not:

- posterior q(z|x): `call(features) -> params` and `distribution(params) -> tfd.Distribution` with
  batch shape [B] and event shape [latent_dim];
- likelihood p(x|z): `call(features) -> params` and `distribution(params) -> tfd.Distribution`
  with event shape the data's. The params may have any trailing shape (two parameters per pixel
  are [B, *event_shape, 2]); the model calls `distribution` on params of shape [K, B, ...] too,
  for K samples of z at once, so it must broadcast over leading dimensions like TFP does;
- prior p(z): `distribution()` or `distribution(model)` -> a tfd.Distribution with event shape
  [latent_dim]. A prior that takes the model may use it (a VampPrior encodes its pseudo-inputs
  with `model.posterior`).

Optional hooks, with the defaults the model uses when a head does not define them:

- posterior `reparameterize(q, eps)`: z from standard normal noise eps [K, B, latent_dim], a
  differentiable function of q's parameters. Default: `q.mean() + q.stddev() * eps`.
- posterior `log_prob(q, z, eps)`: log q(z|x) of the z that `reparameterize` made from eps.
  Default: `q.log_prob(z)`. A head can give a form that needs fewer ops (see FullCovarianceGaussian).
- posterior `stddev(q)`: the marginal standard deviations. Default: `q.stddev()`.
- likelihood `log_likelihood(p, x)`: log p(x|z) summed over the event, in a faster form than
  TFP's. Default: `p.log_prob(x)`. (Bernoulli's is its logits' sum, x * l - softplus(l).)
- likelihood `point_estimate(p)`: the x that `reconstruct`, `sample` and `decode` signatures
  return. Default: `p.mean()`.
- likelihood `in_support(x)`: a boolean tensor of x's shape, False where p(x|z) = 0 for every z
  (checked on every input), and `support`, a phrase for error messages. Default: every finite x.

Every distribution has batch shape [B] and one event per example, so `log_prob` gives one
number (in nats) per example. A new head is one class; tfvae's own also get a registry name.
"""

import contextlib
import inspect
import math
import threading

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


# softplus(x) = x in float32 from x = 17 on; LiteRT's SOFTPLUS kernel overflows to inf past x = 88.7.
_SOFTPLUS_LINEAR_FROM = 80.0


def softplus(x):
    """log(1 + exp(x)), evaluated alike by TensorFlow and LiteRT for every finite x.

    LiteRT computes SOFTPLUS as log(1 + exp(x)) in float32: softplus(89) = inf there, so a head's
    -softplus(-x) became -inf and 0 * softplus(x) NaN on device for parameters TensorFlow handles.
    Past 80 the function is x to float32 precision, and the linear part is added outside the op;
    the gradient is sigmoid(x) everywhere (1 past 80), at x = 0 too.
    """
    return tf.nn.softplus(tf.minimum(x, _SOFTPLUS_LINEAR_FROM)) + tf.nn.relu(x - _SOFTPLUS_LINEAR_FROM)


def _flatten_features(h):
    """Encoder bodies may end in feature maps; the posterior needs one vector per example."""
    if len(h.shape) == 2:
        return h
    return keras.ops.reshape(h, (-1, int(np.prod(h.shape[1:]))))


# The protocol's optional hooks, each with its default (see the module docstring).


def reparameterize(head, q, eps):
    """z = the posterior head's `reparameterize(q, eps)`, by default loc + scale * eps."""
    if hasattr(head, "reparameterize"):
        return head.reparameterize(q, eps)
    return q.mean() + q.stddev() * eps


def posterior_log_prob(head, q, z, eps):
    """log q(z|x) of z = reparameterize(q, eps), in the head's own form if it has one."""
    return head.log_prob(q, z, eps) if hasattr(head, "log_prob") else q.log_prob(z)


def posterior_stddev(head, q):
    """q's marginal standard deviations, in the head's own form if it has one."""
    return head.stddev(q) if hasattr(head, "stddev") else q.stddev()


def log_likelihood(head, p, x):
    """log p(x|z) summed over the event: the likelihood head's `log_likelihood(p, x)` if it has one,
    by default p.log_prob(x)."""
    return head.log_likelihood(p, x) if hasattr(head, "log_likelihood") else p.log_prob(x)


# Whether the graph being traced fuses likelihood sums with XLA (see `fused_sums`).
_fusing = threading.local()


@contextlib.contextmanager
def fused_sums():
    """While open, heads whose log-likelihood is an elementwise log-density summed over the event
    (Bernoulli) trace that sum as one XLA-compiled function: one pass over the K x B x D parameters
    instead of one pass per op.

    Importance-sampled evaluation traces its graphs inside it: there the sum over K x B x 784 logits
    costs about as much as the decoder's matrix products, and fusing it gained ~10%. Training leaves
    it closed (XLA's launch cost on 100 x 784 logits lost ~7% of throughput), and so do the export
    graphs, which TFLite converts op by op.
    """
    previous = getattr(_fusing, "on", False)
    _fusing.on = True
    try:
        yield
    finally:
        _fusing.on = previous


def point_estimate(head, p):
    """The x a likelihood head stands for: its `point_estimate(p)`, by default p's mean."""
    return head.point_estimate(p) if hasattr(head, "point_estimate") else p.mean()


def in_support(head, x):
    """Boolean tensor of x's shape: where the likelihood head gives x a non-zero density."""
    if hasattr(head, "in_support"):
        return head.in_support(x)
    return tf.ones_like(x, dtype=tf.bool)


def support(head):
    """The phrase that describes the likelihood head's support in error messages."""
    return getattr(head, "support", "values where its in_support(x) is true")


def prior_distribution(head, model):
    """p(z) from a prior head: `distribution(model)` if it takes the model, else `distribution()`."""
    if inspect.signature(head.distribution).parameters:
        return head.distribution(model)
    return head.distribution()


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

    def call(self, h):
        return _float32(self.dense(_flatten_features(h)))

    def distribution(self, params):
        loc, raw_scale = tf.split(params, 2, axis=-1)
        if self.log_variance_range is None:
            scale = softplus(raw_scale) + self.min_scale
        else:
            scale = tf.exp(0.5 * tf.clip_by_value(raw_scale, *self.log_variance_range))
        return tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)


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

    def call(self, h):
        return _float32(self.dense(_flatten_features(h)))

    def distribution(self, params):
        loc, raw_tril = params[..., : self.latent_dim], params[..., self.latent_dim :]
        tril = tfp_math.fill_triangular(raw_tril)
        eye = tf.eye(self.latent_dim)
        diagonal = softplus(tf.reduce_sum(tril * eye, axis=-1)) + self.min_scale
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
        scale = softplus(self.raw_scale) + self.min_scale
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


class Likelihood(keras.layers.Layer):
    """A base for likelihood heads: maps decoder features to `params_per_dimension` parameters per
    element of x, shape [B, *event_shape] (or [B, *event_shape, P] for P > 1 parameters).

    Flat features get a dense layer to prod(event_shape) * P values; feature maps whose spatial
    shape already matches x (a convolutional decoder) get a dense layer over channels only.
    Subclasses define `distribution(params)` and, where the support is not every finite x,
    `in_support(x)` and `support`.

    Args:
        event_shape: shape of one x, e.g. (784,) or (28, 28, 1).
    """

    params_per_dimension = 1

    def __init__(self, event_shape, **kwargs):
        super().__init__(**kwargs)
        self.event_shape = tuple(int(d) for d in event_shape)

    def get_config(self):
        return {**super().get_config(), "event_shape": list(self.event_shape)}

    def build(self, input_shape):
        spatial = tuple(input_shape[1:-1])
        per = self.params_per_dimension
        if len(input_shape) > 2 and spatial == self.event_shape[:-1]:
            self.dense = keras.layers.Dense(self.event_shape[-1] * per, name="params")
        elif len(input_shape) == 2:
            self.dense = keras.layers.Dense(int(np.prod(self.event_shape)) * per, name="params")
        else:
            raise ValueError(
                f"decoder: expected features of shape (batch, units) or (batch, *{self.event_shape[:-1]}, "
                f"channels) to produce x of shape {self.event_shape}; got {tuple(input_shape)}."
            )
        self.dense.build(input_shape)

    def call(self, h):
        per = () if self.params_per_dimension == 1 else (self.params_per_dimension,)
        return keras.ops.reshape(_float32(self.dense(h)), (-1, *self.event_shape, *per))

    def _independent(self, distribution):
        return tfd.Independent(distribution, reinterpreted_batch_ndims=len(self.event_shape))


def _in_unit_interval(x):
    """0 <= x <= 1 (False for NaN), by two comparisons: not as clip(x, 0, 1) == x, which LiteRT's
    XNNPack delegate answers False for subnormal x (its clamp flushes them to 0)."""
    return tf.logical_and(x >= 0.0, x <= 1.0)


class _BernoulliLogits(tfd.Bernoulli):
    """tfd.Bernoulli whose log_prob is x * logits - softplus(logits).

    That is x log sigmoid(l) + (1 - x) log(1 - sigmoid(l)) with one softplus instead of TFP's two
    and no guarded products: the same value for finite logits (also for grey x in [0, 1]), and
    the likelihood is most of a small VAE's elementwise work per step.
    """

    def _log_prob(self, event):
        logits = tf.convert_to_tensor(self._logits)
        return tf.cast(event, logits.dtype) * logits - softplus(logits)


def _bernoulli_sum(x, logits, event_ndims):
    """sum over the event of log Bernoulli(x; sigmoid(logits)) = x * logits - softplus(logits)."""
    return tf.reduce_sum(x * logits - softplus(logits), axis=list(range(-event_ndims, 0)))


# Factors 1 + exp(-|l|) multiplied before one log: each is in (1, 2], so a product of 16 stays below 2^16.
_FACTORS_PER_LOG = 16


def _bernoulli_sum_by_products(x, logits, event_ndims):
    """`_bernoulli_sum` with softplus(l) = max(l, 0) + log(1 + exp(-|l|)) and the logs summed as the log of
    products: sum_i log(1 + e_i) = sum_g log prod_{i in g} (1 + e_i) over groups g of 16 elements of the
    event, one log per 16 exps. An e_i that 1 + e_i rounds away is below 6e-8 nats (float64 reference,
    tests/test_distributions.py).

    The event is laid out as 16 rows of G = ceil(D / 16) elements, a group being a column, and both
    terms are reduced over the rows first: XLA on CPU vectorizes that reduction across the G columns,
    while a reduction along the event's contiguous elements runs one element at a time. Reducing over
    the rows took 0.47 of the time of the two sums along the event (K = 1000, 1,000 images x 784
    logits, interleaved rounds). An event whose size is not a multiple of 16 is padded with factors
    of 1 and linear terms of 0."""
    event_size = math.prod(logits.shape[logits.shape.rank - event_ndims:])  # by the static rank: event_ndims may be 0
    groups = -(-event_size // _FACTORS_PER_LOG)

    def as_rows(elementwise, pad_value):
        batch_shape = tf.shape(elementwise)[: elementwise.shape.rank - event_ndims]
        flat = tf.reshape(elementwise, tf.concat([batch_shape, [event_size]], 0))
        padding = tf.fill(tf.concat([batch_shape, [groups * _FACTORS_PER_LOG - event_size]], 0), pad_value)
        return tf.reshape(tf.concat([flat, padding], -1), tf.concat([batch_shape, [_FACTORS_PER_LOG, groups]], 0))

    # x may broadcast against the logits (x [B, D] against K x B logits), so each term has its own batch shape.
    linear = as_rows(x * logits - tf.nn.relu(logits), 0.0)
    factors = as_rows(1.0 + tf.exp(-tf.abs(logits)), 1.0)
    return tf.reduce_sum(tf.reduce_sum(linear, -2) - tf.math.log(tf.reduce_prod(factors, -2)), -1)


_bernoulli_sum_fused = tf.function(_bernoulli_sum_by_products, jit_compile=True)


@keras.saving.register_keras_serializable(package="tfvae")
class Bernoulli(Likelihood):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(logits_i)), parameterized by logits for stability.

    Grey values in [0, 1] are scored as the cross-entropy (the continuous relaxation used for
    non-binarized images); binarize the data for a proper discrete likelihood.

    Args:
        event_shape: shape of one x, e.g. (784,) or (28, 28, 1).
    """

    support = "values in [0, 1] (scale 8-bit images by 1/255, or use likelihood='gaussian')"

    def distribution(self, logits):
        return self._independent(_BernoulliLogits(logits=logits, dtype=tf.float32))

    def log_likelihood(self, p, x):
        # The same sum as p.log_prob(x), from the logits directly: TFP's log_prob path around it took
        # ~9% of importance-sampled evaluation (benchmarks/throughput.py --evaluation-only).
        bernoulli_sum = _bernoulli_sum_fused if getattr(_fusing, "on", False) else _bernoulli_sum
        return bernoulli_sum(x, p.distribution.logits, len(self.event_shape))

    def in_support(self, x):
        return _in_unit_interval(x)



@keras.saving.register_keras_serializable(package="tfvae")
class Gaussian(Likelihood):
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
        scale = softplus(self.raw_scale) + self.min_scale
        return self._independent(tfd.Normal(loc, scale))


# Below these |logits| the closed forms cancel (0 / 0 at logits = 0) and their Taylor series take over.
_CB_SERIES_NORMALIZER, _CB_SERIES_MEAN = 0.25, 0.5


class _ContinuousBernoulliLogits(tfd.ContinuousBernoulli):
    """tfd.ContinuousBernoulli whose log_prob and mean are closed forms in the logits l, in ops that
    LiteRT evaluates as TensorFlow does for every finite l.

    With lambda = sigmoid(l), 1 - 2 lambda = -tanh(l / 2) and artanh of it is -l / 2, so

        log C(lambda) = log(l / tanh(l / 2)),     E[x] = 1 / (1 - exp(-l)) - 1 / l,

    and log p(x) = x l - softplus(l) + log C. Near l = 0 both are 0 / 0 - 1 / l cancellations; there
    they are their Taylor series (u = l / 2): log 2 + u^2/3 - 7 u^4/90 + 62 u^6/2835, and
    1/2 + l/12 - l^3/720 + l^5/30240, each within 1e-9 of the exact value below its threshold, where
    the closed forms are within 2e-7 in float32.
    """

    def _log_prob(self, x):
        logits = self.logits_parameter()
        return tf.cast(x, logits.dtype) * logits - softplus(logits) + _cb_log_normalizer(logits)

    def _mean(self):
        logits = self.logits_parameter()
        small = tf.abs(logits) < _CB_SERIES_MEAN
        l = tf.where(small, _CB_SERIES_MEAN, logits)  # the closed form only where it is used: no 0 / 0 gradient
        closed = 1.0 / (1.0 - tf.exp(-l)) - 1.0 / l
        s = tf.where(small, logits, 0.0)
        series = 0.5 + s * (1.0 / 12 + tf.square(s) * (-1.0 / 720 + tf.square(s) / 30240))
        return tf.where(small, series, closed)


def _cb_log_normalizer(logits):
    """log C(sigmoid(l)) = log(l / tanh(l / 2)) (see `_ContinuousBernoulliLogits`)."""
    small = tf.abs(logits) < _CB_SERIES_NORMALIZER
    l = tf.abs(tf.where(small, _CB_SERIES_NORMALIZER, logits))  # l / tanh(l / 2) is even in l
    closed = tf.math.log(l) - tf.math.log(tf.tanh(0.5 * l))
    u2 = tf.square(0.5 * tf.where(small, logits, 0.0))
    series = math.log(2.0) + u2 * (1.0 / 3 + u2 * (-7.0 / 90 + u2 * 62.0 / 2835))
    return tf.where(small, series, closed)


@keras.saving.register_keras_serializable(package="tfvae")
class ContinuousBernoulli(Likelihood):
    """p(x|z) = prod_i CB(x_i; sigmoid(logits_i)), the continuous Bernoulli (Loaiza-Ganem & Cunningham
    2019): the proper density on [0, 1] that Bernoulli's cross-entropy on grey pixels lacks,
    C(lambda) lambda^x (1 - lambda)^(1 - x) with C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda).

    log C and the mean are closed forms in the logits with Taylor series near lambda = 0.5, where
    they are 0 / 0 (`_ContinuousBernoulliLogits`): finite gradients there, and LiteRT gives the
    values TensorFlow gives for every finite logit. Its mean, not lambda, is the point estimate: the
    mean of CB(lambda) lies nearer 0.5.

    Args:
        event_shape: shape of one x, e.g. (784,) or (28, 28, 1).
    """

    support = "values in [0, 1] (scale 8-bit images by 1/255)"

    def distribution(self, logits):
        return self._independent(_ContinuousBernoulliLogits(logits=logits, dtype=tf.float32))

    def in_support(self, x):
        return _in_unit_interval(x)


def _log1mexp(d):
    """log(1 - exp(-d)) for d > 0, in ops TFLite has builtins for (no expm1, no log1p).

    For d < 0.5, 1 - exp(-d) = d exp(-d/2) sinh(d/2) / (d/2) and log(sinh(u) / u) is its Taylor
    series u^2/6 - u^4/180 + u^6/2835 (next term 4e-10 at u = 0.25): no cancellation near 0.
    """
    u = 0.5 * tf.minimum(d, 0.5)
    series = tf.math.log(2.0 * u) - u + tf.square(u) * (1.0 / 6 + tf.square(u) * (-1.0 / 180 + tf.square(u) / 2835))
    direct = tf.math.log(1.0 - tf.exp(-tf.maximum(d, 0.5)))
    return tf.where(d < 0.5, series, direct)


class _DiscretizedLogistic(tfd.Logistic):
    """A Logistic(loc, scale) on [0, 1] whose mass is gathered into `num_bins` bins centred on
    k / (num_bins - 1), the outer bins open to -inf and +inf (Salimans et al. 2017).

    log P(bin) = log(sigmoid(a) - sigmoid(b)) for the bin's edges b < a (in units of scale) is
    written as log sigmoid(a) + log sigmoid(-b) + log(1 - exp(b - a)): no difference of CDFs that
    underflows for bins far in the tails, so PixelCNN++'s fallback to the density at the bin's
    centre is not needed; each term is <= 0, so log P <= 0.
    """

    def __init__(self, loc, scale, num_bins, name="DiscretizedLogistic"):
        parameters = dict(locals())
        self.num_bins = int(num_bins)
        super().__init__(loc=loc, scale=scale, name=name)
        self._parameters = parameters

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        return super()._parameter_properties(dtype, num_classes=num_classes)  # num_bins is no tensor

    def _bin(self, x):
        return tf.clip_by_value(tf.round(x * (self.num_bins - 1)), 0.0, self.num_bins - 1.0)

    def _log_prob(self, x):
        k = self._bin(x)
        # The edges (k +- 1/2) / (n - 1) directly: the centre +- half a bin would round the middle edge off 1/2.
        upper = ((k + 0.5) / (self.num_bins - 1) - self.loc) / self.scale
        lower = ((k - 0.5) / (self.num_bins - 1) - self.loc) / self.scale
        log_cdf_upper, log_survival_lower = -softplus(-upper), -softplus(lower)  # log sigmoid(a), log sigmoid(-b)
        width = 1.0 / ((self.num_bins - 1) * self.scale)
        interior = log_cdf_upper + log_survival_lower + _log1mexp(width)
        # Selected, not multiplied by 0/1 masks: an unused term may be very negative, and 0 * -inf is NaN.
        # The first bin reaches down to -inf, the last one up to +inf.
        return tf.where(k <= 0, log_cdf_upper, tf.where(k >= self.num_bins - 1, log_survival_lower, interior))

    def _mean(self):
        # E[x] = sum_k P(x >= k / (n - 1)) / (n - 1) for k = 1 .. n - 1, the tail sum of a variable on the bins.
        thresholds = (np.arange(1, self.num_bins, dtype=np.float32) - 0.5) / (self.num_bins - 1)
        tails = tf.sigmoid((self.loc[..., None] - thresholds) / self.scale[..., None])
        return tf.reduce_sum(tails, axis=-1) / (self.num_bins - 1)

    def _sample_n(self, n, seed=None):
        return self._bin(super()._sample_n(n, seed=seed)) / (self.num_bins - 1)


@keras.saving.register_keras_serializable(package="tfvae")
class DiscretizedLogistic(Likelihood):
    """p(x|z) = prod_i P(bin of x_i), a logistic distribution discretized into `num_bins` bins, for
    8-bit data given in [0, 1] as k/255 (Salimans et al. 2017, PixelCNN++, one component). log p(x)
    is a log-probability: <= 0.

    Two parameters per element of x: the location and the log scale, floored at `min_log_scale`.

    Args:
        event_shape: shape of one x, e.g. (784,) or (28, 28, 1).
        num_bins: number of levels, k / (num_bins - 1) for k = 0 .. num_bins - 1.
        min_log_scale: smallest log scale (PixelCNN++'s -7: a bin of 1/255 is then 4 scales wide).

    Example:
        >>> model = tfvae.VAE(input_shape=(28, 28, 1), likelihood="discretized_logistic")
    """

    params_per_dimension = 2

    def __init__(self, event_shape, num_bins=256, min_log_scale=-7.0, **kwargs):
        super().__init__(event_shape, **kwargs)
        if int(num_bins) < 2:
            raise ValueError(f"num_bins: expected an integer >= 2; got {num_bins!r}.")
        self.num_bins = int(num_bins)
        self.min_log_scale = float(min_log_scale)

    def get_config(self):
        return {**super().get_config(), "num_bins": self.num_bins, "min_log_scale": self.min_log_scale}

    @property
    def support(self):
        return f"values k/{self.num_bins - 1} for whole k from 0 to {self.num_bins - 1} (8-bit images scaled by 1/255)"

    def distribution(self, params):
        scale = tf.exp(tf.maximum(params[..., 1], self.min_log_scale))
        return self._independent(_DiscretizedLogistic(params[..., 0], scale, self.num_bins))

    def point_estimate(self, p):
        """The location clipped to [0, 1]: within half a bin of the median. The mean, a sum over the
        bins, would hold num_bins values per pixel while `sample` and `reconstruct` decode a batch."""
        return tf.clip_by_value(p.distribution.loc, 0.0, 1.0)

    def in_support(self, x):
        level = x * (self.num_bins - 1)
        # A tenth of a level: k/255 in float32 is off by ~1e-5 levels, a value between levels by >= 0.5.
        return _in_unit_interval(x) & (tf.abs(level - tf.round(level)) < 0.1)


# lgamma(x) = lgamma(x + 8) - log(x (x + 1) ... (x + 7)), and Stirling's series for lgamma(y), y >= 8.
_LGAMMA_SHIFT = 8
_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


def log_gamma(x):
    """lgamma(x) for x > 0 in TFLite builtin ops (TFLite has no Lgamma): in float32, within 1e-6 of
    scipy's gammaln relative, or 4e-6 absolute near its zeros at 1 and 2 (tests/test_models.py).

    The shift of 8 makes Stirling's series exact to 3e-10 (its next term 1/(1680 y^7) at y = 8);
    the shift's product is summed as logs, which do not overflow for large x.
    """
    y = x + _LGAMMA_SHIFT
    shift = tf.add_n([tf.math.log(x + i) for i in range(_LGAMMA_SHIFT)])
    inverse, inverse_square = 1.0 / y, 1.0 / tf.square(y)
    series = inverse * (1.0 / 12 + inverse_square * (-1.0 / 360 + inverse_square / 1260))
    # (y - 1/2)(log y - 1) - 1/2 is (y - 1/2) log y - y with smaller terms to round.
    return (y - 0.5) * (tf.math.log(y) - 1.0) - 0.5 + _HALF_LOG_TWO_PI + series - shift


def _is_count(x):
    """x is a whole number >= 0 (never for NaN)."""
    return (x >= 0.0) & tf.equal(x, tf.round(x))


class _PoissonLogRate(tfd.Poisson):
    """tfd.Poisson whose log_prob, x log rate - rate - log x!, takes log x! from `log_gamma`."""

    def _log_prob(self, x):
        log_rate = self.log_rate_parameter()
        return x * log_rate - tf.exp(log_rate) - log_gamma(x + 1.0)


@keras.saving.register_keras_serializable(package="tfvae")
class Poisson(Likelihood):
    """p(x|z) = prod_i Poisson(x_i; exp(log_rate_i(z))), for counts: whole numbers >= 0.

    Args:
        event_shape: shape of one x.

    Example:
        >>> model = tfvae.VAE(input_shape=(64,), likelihood="poisson")  # e.g. digits' counts 0..16
    """

    support = "whole numbers >= 0 (counts)"

    def distribution(self, log_rate):
        return self._independent(_PoissonLogRate(log_rate=log_rate))

    def in_support(self, x):
        return _is_count(x)


class _NegativeBinomialLogits(tfd.NegativeBinomial):
    """tfd.NegativeBinomial whose log_prob takes its lgamma terms from `log_gamma`:

    log p(x) = lgamma(x + r) - lgamma(r) - lgamma(x + 1) + r log(1 - p) + x log p, p = sigmoid(logits).
    """

    def _log_prob(self, x):
        r, logits = self.total_count, self.logits_parameter()
        log_binomial = log_gamma(x + r) - log_gamma(r) - log_gamma(x + 1.0)
        return log_binomial - r * softplus(logits) - x * softplus(-logits)


@keras.saving.register_keras_serializable(package="tfvae")
class NegativeBinomial(Likelihood):
    """p(x|z) = prod_i NB(x_i; total_count_i(z), sigmoid(logits_i(z))), for overdispersed counts: the
    number of successes before total_count failures, mean total_count exp(logits), variance larger
    than the mean by the factor 1 + exp(logits) (a Poisson's equals its mean).

    Two parameters per element of x: total_count = softplus(raw) + min_total_count, and the logits.

    Args:
        event_shape: shape of one x.
        min_total_count: smallest total_count; keeps lgamma(total_count) finite.
    """

    params_per_dimension = 2
    support = "whole numbers >= 0 (counts)"

    def __init__(self, event_shape, min_total_count=1e-3, **kwargs):
        super().__init__(event_shape, **kwargs)
        self.min_total_count = float(min_total_count)

    def get_config(self):
        return {**super().get_config(), "min_total_count": self.min_total_count}

    def distribution(self, params):
        total_count = softplus(params[..., 0]) + self.min_total_count
        return self._independent(_NegativeBinomialLogits(total_count, logits=params[..., 1]))

    def in_support(self, x):
        return _is_count(x)


POSTERIORS = {"diagonal": DiagonalGaussian, "full": FullCovarianceGaussian}
PRIORS = {"normal": StandardNormal, "mixture": MixtureOfGaussians, "vamp": VampPrior}
LIKELIHOODS = {
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
    "continuous_bernoulli": ContinuousBernoulli,
    "discretized_logistic": DiscretizedLogistic,
    "poisson": Poisson,
    "negative_binomial": NegativeBinomial,
}


def get(registry, spec, argument, **kwargs):
    """Returns the head named `spec` in `registry` built with `kwargs`, or `spec` itself if it is a head.

    Args:
        registry: one of POSTERIORS, PRIORS, LIKELIHOODS.
        spec: a registered name, or any head: a `keras.layers.Layer` with a `distribution` method
            (see the module docstring), whether tfvae registered its class or not.
        argument: the user-facing argument name, for error messages.
        **kwargs: constructor arguments for a named head; those its constructor does not take are
            left out (a VampPrior needs event_shape, N(0, I) does not).
    """
    if isinstance(spec, str):
        if spec not in registry:
            raise ValueError(f"{argument}: expected one of {sorted(registry)}; got {spec!r}.")
        accepted = inspect.signature(registry[spec]).parameters
        return registry[spec](**{name: value for name, value in kwargs.items() if name in accepted})
    if isinstance(spec, keras.layers.Layer) and callable(getattr(spec, "distribution", None)):
        return spec
    raise TypeError(
        f"{argument}: expected one of {sorted(registry)} or a head (a keras.layers.Layer with a "
        f"distribution method); got {type(spec).__name__}."
    )


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
