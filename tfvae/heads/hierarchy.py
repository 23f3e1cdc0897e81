"""Stochastic layers stacked: the posterior and the prior heads of a hierarchical VAE.

z = [z_1, ..., z_L] is one vector, the layers concatenated from the bottom (z_1, next to x) up, so
every estimator, the noise eps [K, B, sum(d_i)] and the exported z work on it as on one layer.
The default structure is the 2-level HVAE of Tomczak & Welling 2018 ("VAE with a VampPrior"), for any L:

    q(z|x) = q(z_L|x) q(z_{L-1}|x, z_L) ... q(z_1|x, z_2)
    p(z)   = p(z_L) p(z_{L-1}|z_L) ... p(z_1|z_2)          and p(x|z_1, ..., z_L) from the decoder

and `HierarchicalPosterior(direction="bottom_up")` is Burda et al.'s (2015) chain instead,
q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1}) (with `tfvae.networks.Bottom` for their p(x|z_1)), and
`direction="ladder"` the ladder VAE's (Sonderby et al. 2016): q(z_i|x, z_{i+1}) is the prior's
p(z_i|z_{i+1}) and a bottom-up Gaussian estimate of z_i from x multiplied and normalized.

Both q and p are `Chain` distributions: drawn one layer at a time, each layer a distribution of the one
drawn before it (and of x). Every layer's distribution comes from a head that follows the posterior
protocol (`tfvae.heads`): `call(features) -> params`, `distribution(params)` with its optional hooks,
so full-covariance layers or a user's own conditional head work as in a one-layer model. The top
prior p(z_L) is any prior head (a VampPrior's pseudo-inputs are encoded into q(z_L|u)).
"""

import keras
import tensorflow as tf
from tensorflow_probability import distributions as tfd
from tensorflow_probability.python.internal import samplers

from tfvae.heads import ops
from tfvae.heads.posteriors import POSTERIORS, DiagonalGaussian
from tfvae.heads.priors import PRIORS
from tfvae.heads.protocol import get, posterior_log_prob, posterior_stddev, prior_distribution, reparameterize


class Chain(tfd.Distribution):
    """A distribution over z = [z_1, ..., z_L] drawn one layer at a time: the first layer from `first`,
    each next one given the layer drawn before it, top-down (z_L first) or `upward` (z_1 first).

    Its log-density is the sum of the layers' log-densities, each given its predecessor in z; its
    `mean()` is the layers' means taken in drawing order (the first layer's mean, then the mean of the
    next given that mean, ...), and `stddev()` the layers' standard deviations there: each layer's given
    the one before, not the marginals. `layers(z)` gives each layer's distribution, bottom first.

    Args:
        first: the distribution of the layer drawn first (z_L, or z_1 when `upward`); its batch shape
            is this one's.
        conditionals: for the layers after it, in drawing order, pairs (head, make): make(z_before) is
            the layer's distribution given the layer drawn before it, [..., d] -> batch [...], made by
            `head` (whose hooks reparameterize it).
        latent_dims: (d_1, ..., d_L), bottom first.
        first_head: the head that made `first`, for its hooks; None for a prior's (drawn by `sample`).
        upward: draw z_1 first and go up (Burda et al.'s q); else z_L first and go down.
    """

    def __init__(self, first, conditionals, latent_dims, first_head=None, upward=False, name="Chain"):
        parameters = dict(locals())
        self.first = first
        self.conditionals = list(conditionals)
        self.latent_dims = tuple(int(d) for d in latent_dims)
        self.first_head = first_head
        self.upward = bool(upward)
        # The layers' indices (bottom first) in drawing order.
        self.order = list(range(len(self.latent_dims)))[:: 1 if self.upward else -1]
        self._last = (None, None)  # the last z whose layers were made, and those layers (see `layers`)
        super().__init__(dtype=tf.float32, reparameterization_type=tfd.FULLY_REPARAMETERIZED, validate_args=False,
                         allow_nan_stats=True, parameters=parameters, name=name)

    @property
    def top(self):
        """p(z_L) or q(z_L|x), the top layer's own distribution: that of a chain drawn from the top."""
        if self.upward:
            raise ValueError("top: a chain drawn from the bottom up has no distribution of z_L alone; a prior that "
                             "encodes pseudo-inputs (VampPrior) needs a top-down posterior.")
        return self.first

    def _batch_shape(self):
        return self.first.batch_shape

    def _batch_shape_tensor(self):
        return self.first.batch_shape_tensor()

    def _event_shape(self):
        return tf.TensorShape([sum(self.latent_dims)])

    def _event_shape_tensor(self):
        return tf.constant([sum(self.latent_dims)], tf.int32)

    def split(self, z):
        """z [..., sum(d_i)] as its layers [z_1, ..., z_L], bottom first."""
        return tf.split(z, self.latent_dims, axis=-1)

    def _drawn(self, layers):
        """A bottom-first list in drawing order."""
        return [layers[i] for i in self.order]

    def _bottom_first(self, drawn):
        """A list in drawing order, bottom first."""
        layers = [None] * len(drawn)
        for i, item in zip(self.order, drawn):
            layers[i] = item
        return layers

    def layers(self, z=None):
        """The distribution of every layer, bottom first: each given its predecessor in `z`, or, for
        z None, given its predecessor's mean (as `mean()` takes them)."""
        if z is None:
            return self._by_means(lambda head, layer: layer.mean())[1]
        if self._last[0] is z:
            # The z that `descend` made, or whose density was just taken: a training step asks for its
            # layers three times (log q, KL, KL by layer), and rebuilding them would run each layer's
            # network again, forward and backward (28 ms a step instead of 20 for benchmarks/density.py's
            # 2-layer gated MLP).
            return self._last[1]
        before = self._drawn(self.split(tf.convert_to_tensor(z, tf.float32)))[:-1]
        layers = [self.first] + [make(z_before) for (_, make), z_before in zip(self.conditionals, before)]
        return self._remember(z, self._bottom_first(layers))

    def _remember(self, z, layers):
        self._last = (z, layers)
        return layers

    def descend(self, z_first, eps):
        """z = [z_1, ..., z_L] from the first-drawn layer's z and standard normal noise eps [..., sum(d_i)] for the
        others (the first layer's part of eps is not used), through each layer's head (its `reparameterize`)."""
        z, layers = [z_first], [self.first]
        for (head, make), noise in zip(self.conditionals, self._drawn(self.split(eps))[1:]):
            layers.append(make(z[-1]))
            z.append(reparameterize(head, layers[-1], noise))
        z = tf.concat(self._bottom_first(z), axis=-1)
        self._remember(z, self._bottom_first(layers))
        return z

    def reparameterize(self, eps):
        """z from noise eps [..., sum(d_i)]: a differentiable function of every layer's parameters."""
        first = reparameterize(self.first_head, self.first, self.split(eps)[self.order[0]])
        return self.descend(first, eps)

    def layer_log_probs(self, z, eps=None):
        """The log-density of each layer given its predecessor, bottom first, each of z's leading shape;
        given the noise that `reparameterize` made z from, in each head's own form (its `log_prob` hook)."""
        layers = self.layers(z)
        if eps is None:
            return [layer.log_prob(z_i) for layer, z_i in zip(layers, self.split(z))]
        layer_heads = self._bottom_first([self.first_head] + [head for head, _ in self.conditionals])
        return [posterior_log_prob(head, layer, z_i, eps_i)
                for head, layer, z_i, eps_i in zip(layer_heads, layers, self.split(z), self.split(eps))]

    def _log_prob(self, z):
        return tf.add_n(self.layer_log_probs(z))

    def _sample_n(self, n, seed=None):
        seeds = samplers.split_seed(seed, n=len(self.latent_dims))
        z = [self.first.sample(n, seed=seeds[0])]
        for (_, make), layer_seed in zip(self.conditionals, seeds[1:]):
            z.append(make(z[-1]).sample(seed=layer_seed))
        return tf.concat(self._bottom_first(z), axis=-1)

    def _by_means(self, statistic):
        """Each layer's `statistic(head, layer)` and its distribution, bottom first, each layer's given
        the mean of the one drawn before it."""
        values, layers = [statistic(self.first_head, self.first)], [self.first]
        for head, make in self.conditionals:
            layers.append(make(layers[-1].mean()))
            values.append(statistic(head, layers[-1]))
        return self._bottom_first(values), self._bottom_first(layers)

    def _mean(self):
        return tf.concat(self._by_means(lambda head, layer: layer.mean())[0], axis=-1)

    def _stddev(self):
        def stddev(head, layer):
            return layer.stddev() if head is None else posterior_stddev(head, layer)

        return tf.concat(self._by_means(stddev)[0], axis=-1)


def _diagonal_layers(layer_heads, argument):
    """Refuses layers that are not diagonal Gaussians: the ladder multiplies their densities in closed form."""
    for head in layer_heads:
        if not isinstance(head, DiagonalGaussian):
            raise ValueError(f"{argument}: a ladder posterior multiplies diagonal Gaussian layers; got a "
                             f"{type(head).__name__} layer.")


def _conditional(body, head, features):
    """The distribution `head` gives from `body(features)`, features [..., F] with any leading shape."""
    leading = tf.shape(features)[:-1]
    flat = tf.reshape(features, [-1, features.shape[-1]])
    params = ops.as_float32(head(body(flat)))
    return head.distribution(tf.reshape(params, tf.concat([leading, tf.shape(params)[1:]], axis=0)))


def _layer_heads(spec, dims, latent_dims, argument, which):
    """The posterior-protocol heads of the layers of sizes `dims` (bottom first): one registered name for
    all, or a list of heads, one per layer."""
    if isinstance(spec, (list, tuple)):
        if len(spec) != len(dims):
            raise ValueError(f"{argument}: expected {len(dims)} heads, one for each layer {which} "
                             f"(latent_dim={tuple(latent_dims)}); got {len(spec)}.")
        return [get(POSTERIORS, _deserialize(h), argument) for h in spec]
    return [get(POSTERIORS, spec, argument, latent_dim=d) for d in dims]


def _bodies(bodies, latent_dims, argument, which="below the top"):
    bodies = [_deserialize(b) for b in bodies]
    if len(bodies) != len(latent_dims) - 1 or not all(isinstance(b, keras.layers.Layer) for b in bodies):
        raise ValueError(f"{argument}: expected {len(latent_dims) - 1} Keras layers, one body for each layer {which} "
                         f"(latent_dim={tuple(latent_dims)}); got {bodies!r}.")
    return bodies


def _deserialize(spec):
    return keras.saving.deserialize_keras_object(spec) if isinstance(spec, dict) else spec


def _serialized(spec):
    if isinstance(spec, str):
        return spec
    if isinstance(spec, (list, tuple)):
        return [keras.saving.serialize_keras_object(h) for h in spec]
    return keras.saving.serialize_keras_object(spec)


DIRECTIONS = ("top_down", "bottom_up", "ladder")


def precision_weighted(estimate, prior):
    """The normalized product of two diagonal Gaussians N(m, s) and N(m_p, s_p): N(mu, sigma) with
    sigma^-2 = s^-2 + s_p^-2 and mu = sigma^2 (m s^-2 + m_p s_p^-2), broadcast over their leading shapes."""
    precision = tf.math.reciprocal(tf.square(estimate.stddev()))
    prior_precision = tf.math.reciprocal(tf.square(prior.stddev()))
    variance = tf.math.reciprocal(precision + prior_precision)
    loc = variance * (estimate.mean() * precision + prior.mean() * prior_precision)
    return tfd.Independent(tfd.Normal(loc, tf.sqrt(variance)), reinterpreted_batch_ndims=1)


class _Shared:
    """A layer used, not owned: not tracked by Keras, so its weights are saved once, by their owner."""

    def __init__(self, layer):
        self.layer = layer


@keras.saving.register_keras_serializable(package="tfvae")
class HierarchicalPosterior(keras.layers.Layer):
    """q(z|x) over z = [z_1, ..., z_L] from the encoder's features h(x), top-down or bottom-up.

    - "top_down" (Tomczak & Welling's HVAE): q(z_L|x) prod_i q(z_i|x, z_{i+1}), q(z_L|x) a head on h and
      q(z_i|x, z_{i+1}) a head on body_i([h, z_{i+1}]). Its parameters (`call`) are q(z_L|x)'s and h itself,
      so `model.infer`, which moves each example's parameters, refines every layer.
    - "bottom_up" (Burda et al.'s chain): q(z_1|x) prod_i q(z_{i+1}|z_i), q(z_1|x) a head on h and
      q(z_{i+1}|z_i) a head on body_i(z_i). Its parameters are q(z_1|x)'s: `infer` refines the bottom layer,
      the layers above follow it.
    - "ladder" (Sonderby et al.'s ladder VAE): a deterministic path up, d_1 = h and d_{i+1} = body_i(d_i),
      each layer's head giving a Gaussian estimate N(m_i, s_i) of z_i from d_i; then down, q(z_L|x) = N(m_L, s_L)
      and q(z_i|x, z_{i+1}) = N(m_i, s_i) x p(z_i|z_{i+1}) normalized (`precision_weighted`), so q shares the
      prior's top-down networks. Its parameters are every layer's estimate, which `infer` refines. Diagonal
      Gaussian layers only, of q and of p; the model hands it its prior (`attach_prior`).

    Args:
        latent_dims: (d_1, ..., d_L), bottom first, L >= 2.
        bodies: L - 1 Keras layers, bottom first: for "top_down" those of z_1 ... z_{L-1}, each from
            [h, z_{i+1}] to features; for "bottom_up" those of z_2 ... z_L, each from z_{i-1}; for "ladder"
            those of d_2 ... d_L, each from d_{i-1}.
        layer: the posterior head of every layer, a name in `tfvae.heads.POSTERIORS` ("diagonal",
            "full"), or a list of L heads (bottom first) following the posterior protocol.
        direction: "top_down", "bottom_up" or "ladder".

    Example:
        >>> model = tfvae.VAE(input_shape=(784,), latent_dim=(40, 40))
        >>> q = model.encode(x)              # a Chain distribution, event [80]
        >>> q1, q2 = q.layers()              # q(z_1|x, z_2 = its mean), q(z_2|x)
    """

    def __init__(self, latent_dims, bodies, layer="diagonal", direction="top_down", **kwargs):
        super().__init__(**kwargs)
        self.latent_dims = tuple(int(d) for d in latent_dims)
        if direction not in DIRECTIONS:
            raise ValueError(f"direction: expected one of {', '.join(DIRECTIONS)}; got {direction!r}.")
        self.direction = direction
        self._layer = _serialized(layer)  # the spec as config, not a second reference to the heads
        upward = direction == "bottom_up"
        self.bodies = _bodies(bodies, self.latent_dims, "posterior", "above the bottom" if upward else "below the top")
        first = 0 if upward else len(self.latent_dims) - 1
        rest = [d for i, d in enumerate(self.latent_dims) if i != first]
        if isinstance(layer, (list, tuple)):
            if len(layer) != len(self.latent_dims):
                raise ValueError(f"posterior: expected {len(self.latent_dims)} heads, one per layer "
                                 f"(latent_dim={self.latent_dims}); got {len(layer)}.")
            self.first_head = get(POSTERIORS, _deserialize(layer[first]), "posterior")
            layer = [h for i, h in enumerate(layer) if i != first]
        else:
            self.first_head = get(POSTERIORS, layer, "posterior", latent_dim=self.latent_dims[first])
        self.layer_heads = _layer_heads(layer, rest, self.latent_dims, "posterior", "but the first drawn")
        self._prior = None  # the ladder's p(z_i|z_{i+1}), from `attach_prior`
        if direction == "ladder":
            _diagonal_layers([self.first_head, *self.layer_heads], "posterior")

    def get_config(self):
        return {**super().get_config(), "latent_dims": list(self.latent_dims), "layer": self._layer,
                "direction": self.direction, "bodies": [keras.saving.serialize_keras_object(b) for b in self.bodies]}

    def attach_prior(self, prior):
        """The model's prior, whose p(z_i|z_{i+1}) the ladder's q(z_i|x, z_{i+1}) multiplies; other directions
        do not use it."""
        if self.direction != "ladder":
            return
        if not isinstance(prior, HierarchicalPrior) or prior.latent_dims != self.latent_dims:
            raise ValueError(f"prior: a ladder posterior needs a HierarchicalPrior of the same layers "
                             f"(latent_dim={self.latent_dims}); got {type(prior).__name__}.")
        _diagonal_layers(prior.layer_heads, "prior")
        self._prior = _Shared(prior)

    def build(self, input_shape):
        features = ops.flatten_features(tf.zeros((1, *input_shape[1:])))
        if self.direction == "ladder":
            # Up the deterministic path: each layer's estimate from its own d_i, the top's from d_L.
            self.estimate_sizes = []
            for body, head in zip(self.bodies, self.layer_heads):
                self.estimate_sizes.append(int(head(features).shape[-1]))
                features = body(features)
            self.first_size = int(self.first_head(features).shape[-1])
            return
        self.first_size = int(self.first_head(features).shape[-1])
        upward = self.direction == "bottom_up"
        # Each body's input: z of the layer below (bottom-up), or [h, z of the layer above] (top-down).
        inputs = self.latent_dims[:-1] if upward else [features.shape[-1] + d for d in self.latent_dims[1:]]
        for body, head, size in zip(self.bodies, self.layer_heads, inputs):
            head(body(tf.zeros((1, size))))

    def call(self, h):
        h = ops.as_float32(ops.flatten_features(h))
        if self.direction == "bottom_up":
            return ops.as_float32(self.first_head(h))
        if self.direction == "ladder":
            estimates = []
            for body, head in zip(self.bodies, self.layer_heads):
                estimates.append(ops.as_float32(head(h)))
                h = body(h)
            return tf.concat([ops.as_float32(self.first_head(h)), *estimates], axis=-1)
        return tf.concat([ops.as_float32(self.first_head(h)), h], axis=-1)

    def distribution(self, params):
        first = self.first_head.distribution(params[..., : self.first_size])
        if self.direction == "bottom_up":
            conditionals = [(head, lambda z_below, body=body, head=head: _conditional(body, head, z_below))
                            for body, head in zip(self.bodies, self.layer_heads)]
            return Chain(first, conditionals, self.latent_dims, self.first_head, upward=True)
        if self.direction == "ladder":
            return self._ladder(first, params[..., self.first_size :])
        h = params[..., self.first_size :]

        def given(body, head):
            def make(z_above):
                features = tf.broadcast_to(h, tf.concat([tf.shape(z_above)[:-1], tf.shape(h)[-1:]], axis=0))
                return _conditional(body, head, tf.concat([features, z_above], axis=-1))

            return head, make

        conditionals = [given(body, head) for body, head in zip(self.bodies, self.layer_heads)][::-1]
        return Chain(first, conditionals, self.latent_dims, self.first_head)

    def _ladder(self, first, estimate_params):
        if self._prior is None:
            raise ValueError("posterior: a ladder posterior multiplies the prior's layers; give it to a tfvae.VAE "
                             "with a HierarchicalPrior (which calls attach_prior).")
        prior = self._prior.layer
        estimates = [head.distribution(p) for head, p in
                     zip(self.layer_heads, tf.split(estimate_params, self.estimate_sizes, axis=-1))]

        def given(i):
            def make(z_above):
                return precision_weighted(estimates[i], _conditional(prior.bodies[i], prior.layer_heads[i], z_above))

            return self.layer_heads[i], make

        return Chain(first, [given(i) for i in reversed(range(len(estimates)))], self.latent_dims, self.first_head)

    def reparameterize(self, q, eps):
        return q.reparameterize(eps)

    def log_prob(self, q, z, eps):
        return tf.add_n(q.layer_log_probs(z, eps))

    def stddev(self, q):
        return q.stddev()


class _TopLayer:
    """The model as a prior head of z_L sees it: its `posterior` is q(z_L|x) (a VampPrior encodes with it)."""

    def __init__(self, model):
        self.model = model

    def posterior(self, x, condition=None):
        return self.model.posterior(x, condition).top


@keras.saving.register_keras_serializable(package="tfvae")
class HierarchicalPrior(keras.layers.Layer):
    """p(z) = p(z_L) prod_i p(z_i|z_{i+1}) over z = [z_1, ..., z_L]: a prior head on top, and each layer
    below a posterior-protocol head on body_i(z_{i+1}).

    Args:
        latent_dims: (d_1, ..., d_L), bottom first, L >= 2.
        bodies: L - 1 Keras layers, body_1 ... body_{L-1}, each from z_{i+1} to features.
        top: p(z_L): a name in `tfvae.heads.PRIORS` ("normal", "mixture", "vamp") or a prior head.
        layer: the head of p(z_i|z_{i+1}): a name in `tfvae.heads.POSTERIORS` or L - 1 heads.
        event_shape: the shape of x, for a top prior that needs it (the VampPrior's pseudo-inputs).
    """

    def __init__(self, latent_dims, bodies, top="normal", layer="diagonal", event_shape=None, **kwargs):
        super().__init__(**kwargs)
        self.latent_dims = tuple(int(d) for d in latent_dims)
        self.event_shape = None if event_shape is None else tuple(int(d) for d in event_shape)
        self._top, self._layer = _serialized(top), _serialized(layer)  # the specs as config
        self.bodies = _bodies(bodies, self.latent_dims, "prior")
        self.top_head = get(PRIORS, _deserialize(top), "prior", latent_dim=self.latent_dims[-1],
                            event_shape=self.event_shape)
        self.layer_heads = _layer_heads(layer, self.latent_dims[:-1], self.latent_dims, "prior", "below the top")
        # Built now: nothing calls a prior head, so nothing else would build its networks.
        for body, head, d_above in zip(self.bodies, self.layer_heads, self.latent_dims[1:]):
            head(body(tf.zeros((1, d_above))))
        self.built = True

    def get_config(self):
        return {**super().get_config(), "latent_dims": list(self.latent_dims), "top": self._top,
                "layer": self._layer, "event_shape": None if self.event_shape is None else
                list(self.event_shape), "bodies": [keras.saving.serialize_keras_object(b) for b in self.bodies]}

    def distribution(self, model):
        top = prior_distribution(self.top_head, _TopLayer(model))
        conditionals = [(head, lambda z_above, body=body, head=head: _conditional(body, head, z_above))
                        for body, head in zip(self.bodies, self.layer_heads)][::-1]
        return Chain(top, conditionals, self.latent_dims)
