"""Likelihood heads p(x|z): Bernoulli, Gaussian, continuous Bernoulli, discretized logistic, Poisson
and negative binomial (see `tfvae.heads` for the protocol)."""

import math

import keras
import numpy as np
import tensorflow as tf
from tensorflow_probability import distributions as tfd

from tfvae.heads import ops


# Whether the graph being traced fuses likelihood sums with XLA (see `fused_sums`).
_fusing = ops.TracingSwitch()


def fused_sums():
    """While open, heads whose log-likelihood is an elementwise log-density summed over the event
    (Bernoulli) trace that sum as one XLA-compiled function: one pass over the K x B x D parameters
    instead of one pass per op.

    Importance-sampled evaluation traces its graphs inside it: there the sum over K x B x 784 logits
    costs about as much as the decoder's matrix products, and fusing it gained ~10%. Training leaves
    it closed (XLA's launch cost on 100 x 784 logits lost ~7% of throughput), and so do the export
    graphs, which TFLite converts op by op.
    """
    return _fusing.on()


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
        return keras.ops.reshape(ops.as_float32(self.dense(h)), (-1, *self.event_shape, *per))

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
        return tf.cast(event, logits.dtype) * logits - ops.softplus(logits)


def _bernoulli_sum(x, logits, event_ndims):
    """sum over the event of log Bernoulli(x; sigmoid(logits)) = x * logits - softplus(logits)."""
    return tf.reduce_sum(x * logits - ops.softplus(logits), axis=list(range(-event_ndims, 0)))


# Factors 1 + exp(-|l|) multiplied before one log: each is in (1, 2], so a product of 16 stays below 2^16.
_FACTORS_PER_LOG = 16


def _bernoulli_sum_by_products(x, logits, event_ndims):
    """`_bernoulli_sum` with softplus(l) = max(l, 0) + log(1 + exp(-|l|)) and the logs summed as the log of
    products: sum_i log(1 + e_i) = sum_g log prod_{i in g} (1 + e_i) over groups g of 16 elements of the
    event, one log per 16 exps. An e_i that 1 + e_i rounds away is below 6e-8 nats (float64 reference,
    tests/test_heads.py).

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
        bernoulli_sum = _bernoulli_sum_fused if _fusing else _bernoulli_sum
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
            shape=self.event_shape, initializer=keras.initializers.Constant(ops.UNIT_SOFTPLUS), name="raw_scale"
        )

    def get_config(self):
        return {**super().get_config(), "min_scale": self.min_scale}

    def distribution(self, loc):
        scale = ops.softplus(self.raw_scale) + self.min_scale
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
        return tf.cast(x, logits.dtype) * logits - ops.softplus(logits) + _cb_log_normalizer(logits)

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
        log_cdf_upper, log_survival_lower = -ops.softplus(-upper), -ops.softplus(lower)  # log sigmoid(a), log sigmoid(-b)
        width = 1.0 / ((self.num_bins - 1) * self.scale)
        interior = log_cdf_upper + log_survival_lower + ops.log1mexp(width)
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


def _is_count(x):
    """x is a whole number >= 0 (never for NaN)."""
    return (x >= 0.0) & tf.equal(x, tf.round(x))


class _PoissonLogRate(tfd.Poisson):
    """tfd.Poisson whose log_prob, x log rate - rate - log x!, takes log x! from `log_gamma`."""

    def _log_prob(self, x):
        log_rate = self.log_rate_parameter()
        return x * log_rate - tf.exp(log_rate) - ops.log_gamma(x + 1.0)


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
        log_binomial = ops.log_gamma(x + r) - ops.log_gamma(r) - ops.log_gamma(x + 1.0)
        return log_binomial - r * ops.softplus(logits) - x * ops.softplus(-logits)


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
        total_count = ops.softplus(params[..., 0]) + self.min_total_count
        return self._independent(_NegativeBinomialLogits(total_count, logits=params[..., 1]))

    def in_support(self, x):
        return _is_count(x)


LIKELIHOODS = {
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
    "continuous_bernoulli": ContinuousBernoulli,
    "discretized_logistic": DiscretizedLogistic,
    "poisson": Poisson,
    "negative_binomial": NegativeBinomial,
}
