"""The variational autoencoder: a Keras model whose q(z|x), p(z) and p(x|z) are TFP distributions."""

import math
import numbers

import keras
import tensorflow as tf

from tfvae import arguments, checks, distribute, heads, inference, networks, noise, objectives, proposals, resources
from tfvae import conditions, schedules, trainer
from tfvae import precision as tfvae_precision


@keras.saving.register_keras_serializable(package="tfvae")
class VAE(trainer.Trainer, keras.Model):
    """A variational autoencoder trained by maximizing the ELBO (or the IWAE bound) with `fit`.

    Args:
        input_shape: shape of one x, e.g. (784,) or (28, 28, 1).
        latent_dim: dimension of z; or a tuple (d_1, ..., d_L), one per stochastic layer from the bottom
            (next to x) up, for a hierarchical VAE (`tfvae.heads.hierarchy`): z = [z_1, ..., z_L],
            q(z_L|x) prod q(z_i|x, z_{i+1}), p(z_L) prod p(z_i|z_{i+1}) and p(x|z_1, ..., z_L). Then
            `posterior` names every layer's head, `prior` the top layer's p(z_L), and the networks of the
            layers below the top are MLPs like the encoder's ("gated_mlp" for "gated_mlp" and "conv").
        encoder: body from x to features: None or "mlp" (MLP [200, 200] tanh), "gated_mlp" (GatedMLP
            [300, 300]), "conv", or any Keras layer.
        decoder: body from z to features: None, "mlp", "gated_mlp", "conv", or any Keras layer.
        likelihood: p(x|z): a name in `tfvae.heads.LIKELIHOODS` ("bernoulli", "gaussian",
            "continuous_bernoulli", "discretized_logistic", "poisson", "negative_binomial"), or a head.
        prior: p(z): "normal" (N(0, I)), "mixture" (learned mixture of Gaussians), "vamp" (VampPrior,
            500 pseudo-inputs), or a head.
        posterior: q(z|x): "diagonal", "full" (full covariance), or a head.
        beta: weight of the KL term in the training loss, finite and >= 0 (1 is the true ELBO).
        num_samples: K, the samples of z per example in the training objective.
        objective: a name in `tfvae.objectives.OBJECTIVES`: "elbo" (the mean of K single-sample
            ELBOs) or "iwae" (the K-sample IWAE bound).
        seed: seed of the model's noise; None draws it from `keras.utils.set_random_seed`'s state.
        kl_schedule: the KL term of the training loss as a function of the optimizer's step: None
            (beta * KL), a `tfvae.schedules` schedule (`Linear`, `Cyclical`, `FreeBits`, `Capacity`), or
            a spec string such as "cyclical:period=1000" (see `tfvae.schedules.get`).
        condition_shape: None, or the shape of a condition c, e.g. (10,) for one-hot class labels:
            a conditional VAE, q(z|x, c) and p(x|z, c) with p(z) kept. c (flattened) is joined to the
            encoder body's features and to z at the decoder body's input, so any body works
            unchanged. `fit(x, y)` takes y as the condition; the estimators take `condition=`.

    Example:
        >>> model = tfvae.VAE(input_shape=(64,), latent_dim=8)
        >>> model.fit(x_train, epochs=10, batch_size=100)
        >>> model.log_prob(x_test, num_samples=1000)  # [batch] nats
        >>> cvae = tfvae.VAE(input_shape=(64,), latent_dim=8, condition_shape=(10,))
        >>> cvae.fit(x_train, one_hot_labels, epochs=10)
        >>> cvae.sample(50, condition=one_hot_labels[0])  # 50 draws of that class

    Hooks for code built on the model (evaluation, inference, export, a prior that encodes):
    `posterior(x)`, `likelihood(z)`, `log_likelihood(x, z)`, `noise(num_samples, batch_size)`,
    `as_input(x)` and `prior`. Unlike `encode`/`decode` they take tensors as they are, unchecked.
    The hooks of x or z take `condition=` too (None for an unconditional model), and
    `as_condition(condition, rows)` checks one (`as_sample_condition(condition, num_samples)` one for `sample`).
    """

    def __init__(
        self,
        input_shape=(784,),
        latent_dim=50,
        encoder=None,
        decoder=None,
        likelihood="bernoulli",
        prior="normal",
        posterior="diagonal",
        beta=1.0,
        num_samples=1,
        objective="elbo",
        seed=None,
        kl_schedule=None,
        condition_shape=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.condition_shape = conditions.condition_shape(condition_shape)
        self.event_shape = tuple(arguments.positive_int(d, "input_shape") for d in _as_tuple(input_shape))
        self.latent_dims = arguments.latent_dims(latent_dim)  # one per stochastic layer, bottom first
        self.latent_dim = sum(self.latent_dims)  # the size of z, every layer's concatenated
        self.num_samples = arguments.positive_int(num_samples, "num_samples")
        objectives.get(objective)  # refuses an unknown name here, not at the first step
        self.objective = objective
        self.seed = checks.seed(seed)
        # Heads given by name are saved by name; others as serialized layers.
        self._head_names = {
            "likelihood": likelihood if isinstance(likelihood, str) else None,
            "prior": prior if isinstance(prior, str) else None,
            "posterior": posterior if isinstance(posterior, str) else None,
        }

        self.encoder = networks.get(_deserialize(encoder), "encoder", self.event_shape)
        self.decoder = networks.get(_deserialize(decoder), "decoder", self.event_shape)
        if len(self.latent_dims) > 1:
            posterior, prior = self._hierarchy(_deserialize(posterior), _deserialize(prior), encoder)
            self._head_names.update({"posterior": None, "prior": None})  # saved whole: their networks are in them
        self.posterior_head = heads.get(
            heads.POSTERIORS, _deserialize(posterior), "posterior", latent_dim=self.latent_dim
        )
        self.prior_head = heads.get(
            heads.PRIORS, _deserialize(prior), "prior", latent_dim=self.latent_dim, event_shape=self.event_shape
        )
        if hasattr(self.posterior_head, "attach_prior"):  # a ladder's q multiplies the prior's layers
            self.posterior_head.attach_prior(self.prior_head)
        self.likelihood_head = heads.get(
            heads.LIKELIHOODS, _deserialize(likelihood), "likelihood", event_shape=self.event_shape
        )

        self._beta = keras.Variable(_beta(beta), trainable=False, name="beta")
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="noise")
        names = ("loss", "elbo", "reconstruction", "kl", *objectives.layer_kl_names(self.latent_dims))
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        bodies = [spec or "mlp" for spec in (encoder, decoder)]
        if all(spec in ("mlp", "gated_mlp", "conv") for spec in bodies):  # tfvae's, whose size resources knows
            # Mixed bodies are estimated as MLPs, the smallest: a refused model would certainly not fit.
            body = bodies[0] if bodies[0] == bodies[1] else "mlp"
            # Named for what makes it too large: the input shape if even one latent dimension would not fit.
            resources.check_memory(resources.model_bytes(self.event_shape, 1, body), "input_shape")
            resources.check_memory(resources.model_bytes(self.event_shape, self.latent_dim, body), "latent_dim")
        try:
            self.build((None, *self.event_shape))
        except BaseException:
            _forget_uninitialized_variables(self)
            raise
        self.kl_schedule = schedules.get(kl_schedule, self)  # checked against the built heads

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        heads = {"likelihood": self.likelihood_head, "prior": self.prior_head, "posterior": self.posterior_head}
        heads = {role: self._head_names[role] or serialize(head) for role, head in heads.items()}
        return {
            **super().get_config(),
            "input_shape": list(self.event_shape),
            "latent_dim": self.latent_dim if len(self.latent_dims) == 1 else list(self.latent_dims),
            "encoder": serialize(self.encoder),
            "decoder": serialize(self.decoder),
            **heads,
            "beta": float(self.beta),
            "num_samples": self.num_samples,
            "objective": self.objective,
            "seed": self.seed,
            "kl_schedule": None if self.kl_schedule is None else serialize(self.kl_schedule),
            # Absent for an unconditional model, whose config stays as it was before conditions.
            **({"condition_shape": list(self.condition_shape)} if self.condition_shape is not None else {}),
        }

    def build(self, input_shape):
        # A zero batch through every part creates all weights now, so `save`/`load_model`, `summary`
        # and export work before the first `fit`; what each head gives is checked against the protocol
        # here, where a mistake can be named, not at the first step (or in the export) as a shape error.
        try:
            checks.heads_follow_protocol(self)
        except conditions.MissingCondition:
            raise ValueError(
                f"prior: the {type(self.prior_head).__name__} head encodes inputs without a condition, so it cannot "
                f"be the prior of a conditional model (condition_shape={self.condition_shape}); use 'normal' or "
                f"'mixture'."
            ) from None

    def _hierarchy(self, posterior, prior, encoder):
        """The heads of a hierarchy: those named become `HierarchicalPosterior` and `HierarchicalPrior` of them."""
        kind = "gated_mlp" if encoder in ("gated_mlp", "conv") else "mlp"

        def bodies():
            return [networks.get(kind, "encoder", self.event_shape) for _ in self.latent_dims[1:]]

        if isinstance(posterior, str):
            posterior = heads.HierarchicalPosterior(self.latent_dims, bodies(), layer=posterior)
        if isinstance(prior, str):
            prior = heads.HierarchicalPrior(self.latent_dims, bodies(), top=prior, event_shape=self.event_shape)
        return posterior, prior

    @property
    def beta(self):
        """The KL weight, read from a variable, so callbacks can change it without retracing.

        A tensor, not the variable: under a strategy that is a MirroredVariable, which `float()` refuses."""
        return tf.convert_to_tensor(self._beta)

    @beta.setter
    def beta(self, value):
        self._beta.assign(_beta(value))

    @property
    def prior(self):
        """p(z), a TFP distribution with event shape [latent_dim]."""
        return heads.prior_distribution(self.prior_head, self)

    @property
    def metrics(self):
        return list(self.trackers.values())

    # The hooks: tensors in, distributions out, no input checks.

    def posterior_parameters(self, x, condition=None):
        """The posterior head's parameters for a float32 batch x (and its condition [B, *condition_shape])."""
        return self.posterior_head(self._joined(self.encoder(x), condition))

    def posterior(self, x, condition=None):
        """q(z|x) (q(z|x, c) given the condition) for a float32 batch x: batch shape [B], event shape [latent_dim]."""
        return self.posterior_head.distribution(self.posterior_parameters(x, condition))

    def likelihood(self, z, condition=None):
        """p(x|z) for z of shape [..., latent_dim] (e.g. [K, B, latent_dim]): batch shape z's leading ones.

        A condition [B, *condition_shape] (or one row, [1, ...]) is broadcast over z's leading dimensions.
        """
        leading = tf.shape(z)[:-1]
        z = self._joined(tf.reshape(z, (-1, self.latent_dim)), condition, leading)
        params = self.likelihood_head(self.decoder(z))
        if params.dtype in (tf.bfloat16, tf.float16):  # a decoder computing in reduced precision (tfvae.precision)
            params = tf.cast(params, tf.float32)
        params = tf.reshape(params, tf.concat([leading, tf.shape(params)[1:]], axis=0))
        return self.likelihood_head.distribution(params)

    def log_likelihood(self, x, z, condition=None):
        """log p(x|z_k) (or p(x|z_k, c)) for x [B, *event_shape] and z [K, B, latent_dim]: [K, B]."""
        return heads.log_likelihood(self.likelihood_head, self.likelihood(z, condition), x)

    def _joined(self, features, condition, leading=None):
        return conditions.joined(features, condition, self.condition_shape, leading)

    def noise(self, num_samples, batch_size):
        """eps ~ N(0, I), [K, B, latent_dim], from the model's seed generator.

        Drawn for the whole global batch and sliced per replica: under a tf.distribute strategy
        each replica sees the noise a single device would give the same examples, so distributed
        training matches single-device training draw for draw (also for uneven shares).
        """
        offset, total = distribute.batch_share(tf.convert_to_tensor(batch_size, tf.int32))
        seed = tf.cast(self.seed_generator.next(), tf.int64)
        eps = noise.standard_normal((num_samples, total, self.latent_dim), seed)
        return eps[:, offset : offset + batch_size]

    def as_input(self, x, name="x"):
        """x checked (dtype, shape (batch, *input_shape), finite, in the likelihood's support) as a float32 tensor."""
        return checks.as_batch(x, self.event_shape, name, self.likelihood_head)

    def as_condition(self, condition, rows=None, name="condition"):
        """The condition checked against the model: None for an unconditional model (which refuses one),
        for a conditional one a float32 tensor of shape (rows, *condition_shape), finite.

        Args:
            condition: None, or an array (numpy, lists, a tensor) of conditions, one row per example.
            rows: the number of examples it goes with, or None if unknown.
            name: how messages name it.
        """
        return conditions.checked(condition, self.condition_shape, rows, name)

    def as_sample_condition(self, condition, num_samples, name="condition"):
        """`as_condition` for `sample`: one condition (shape `condition_shape`) for every draw, or one per draw."""
        return conditions.checked_for_sample(condition, self.condition_shape, num_samples, name)

    # The user's API: checked inputs.

    def encode(self, x, condition=None):
        """q(z|x) (q(z|x, c) given the condition): a TFP distribution with batch shape [B] and event shape [latent_dim]."""
        x = self.as_input(x)
        return self.posterior(x, self.as_condition(condition, x.shape[0]))

    def decode(self, z, condition=None):
        """p(x|z) (p(x|z, c) given the condition): a TFP distribution with batch shape [B] and event shape `input_shape`."""
        z = checks.as_batch(z, (self.latent_dim,), name="z")
        return self.likelihood(z, self.as_condition(condition, z.shape[0]))

    def reconstruct(self, x, condition=None):
        """The likelihood's point estimate (its mean by default) of p(x|z) at the posterior mean z = E_q[z]."""
        x = self.as_input(x)
        condition = self.as_condition(condition, x.shape[0])
        z = self.posterior(x, condition).mean()
        return heads.point_estimate(self.likelihood_head, self.likelihood(z, condition))

    def call(self, x, condition=None):
        return self.reconstruct(x, condition)

    def sample(self, num_samples, seed=None, condition=None):
        """The likelihood's point estimates (means by default) of p(x|z) for z ~ p(z): [num_samples, *input_shape].

        Args:
            num_samples: how many x to draw.
            seed: an int for a reproducible draw; None takes the model's next seed.
            condition: for a conditional model, one condition (shape `condition_shape`) for every
                draw, or one per draw (num_samples, *condition_shape).
        """
        num_samples = arguments.positive_int(num_samples, "num_samples")
        condition = self.as_sample_condition(condition, num_samples)
        event_size = math.prod(self.event_shape)
        resources.check_step(num_samples * event_size, "num_samples")
        resources.check_memory(resources.sampling_bytes(num_samples, self.event_shape, self.latent_dim), "num_samples")
        seed = noise.stateless_seed(checks.seed(seed), self.seed_generator)
        z = self.prior.sample(num_samples, seed=tf.cast(seed, tf.int32))
        return heads.point_estimate(self.likelihood_head, self.likelihood(z, condition))

    def elbo(self, x, num_samples=1, condition=None, seed=None):
        """The ELBO of each x (of log p(x|c) given the condition), in nats: [B]. More samples lower its variance,
        not its bias. An int `seed` repeats the estimate; None takes the model's next noise."""
        num_samples = arguments.positive_int(num_samples, "num_samples")
        seed = checks.seed(seed)
        resources.check_step(num_samples * math.prod(self.event_shape), "num_samples")  # all K at once
        x = self.as_input(x)
        condition = self.as_condition(condition, x.shape[0])
        with noise.seeded(self.seed_generator, seed):
            elbo = self._compiled_bound(x, num_samples, condition)["elbo"]
        return checks.finite_estimate(elbo, "elbo", x=x, condition=condition)

    def log_prob(self, x, num_samples=1000, precision="float32", condition=None, seed=None, proposal="encoder"):
        """The importance-weighted estimate of log p(x) (log p(x|c) given the condition) with K = num_samples, in nats: [B].

        A lower bound in expectation that tightens to log p(x) as K grows (Burda et al. 2015). The K
        samples are taken in chunks, so memory stays bounded for K = 5000.

        precision: "float32", or "bfloat16" for the decoder's matrix products (about twice as
            fast on CPUs with avx512_bf16 or AMX; see `tfvae.precision`).
        seed: an int repeats the estimate; None takes the model's next noise.
        proposal: "encoder" (q(z|x)), "refined" (q refined by `infer` from several starts and mixed,
            `tfvae.inference.refined_mixture`) or a TFP distribution over z with batch shape [B];
            `tfvae.evaluate.log_prob_estimate` gives the estimate's reliability too.
        """
        num_samples = arguments.positive_int(num_samples, "num_samples")
        precision = tfvae_precision.check(precision)
        seed = checks.seed(seed)
        # Chunked, so memory is bounded; without a progress bar, one example's K samples are one step.
        resources.check_step(num_samples * math.prod(self.event_shape), "num_samples")
        x = self.as_input(x)
        condition = self.as_condition(condition, x.shape[0])
        objectives.check_precision(precision, proposal)
        if proposals.is_encoder(proposal):
            with noise.seeded(self.seed_generator, seed):
                log_prob = self.importance_sampled(x, tf.constant(num_samples), precision, condition)["log_prob"]
        else:
            log_w = proposals.log_weights(self, x, proposal, num_samples, condition, seed)
            log_prob = tf.constant(objectives.log_mean_exp(log_w), tf.float32)
        return checks.finite_estimate(log_prob, "log_prob", x=x, condition=condition)

    def importance_sampled(self, x, num_samples, precision="float32", condition=None, with_log_weights=False):
        """`tfvae.objectives.importance_sampled` with the model's noise, compiled: log p(x) and the ELBO's terms.

        The graph is traced with the likelihood's sum over pixels fused by XLA (`heads.fused_sums`).

        precision: "float32" or "bfloat16", the decoder's compute precision (see `tfvae.precision`).
        condition: the conditions of x for a conditional model (then log p(x|c)), else None.
        with_log_weights: also return the log-weights [K, B] (a Python bool: a graph of its own).
        """
        with heads.fused_sums():
            if precision == "float32":
                return self._importance_sampled(x, num_samples, condition, with_log_weights)
            with tfvae_precision.computing_in([self.decoder, self.likelihood_head], tfvae_precision.check(precision)):
                return self._importance_sampled_bfloat16(x, num_samples, condition, with_log_weights)

    # One compiled function per precision: a layer's compute dtype is fixed when a graph is traced.
    @tf.function(reduce_retracing=True)
    def _importance_sampled(self, x, num_samples, condition=None, with_log_weights=False):
        return objectives.importance_sampled(self, x, num_samples, self.noise, condition, with_log_weights)

    @tf.function(reduce_retracing=True)
    def _importance_sampled_bfloat16(self, x, num_samples, condition=None, with_log_weights=False):
        return objectives.importance_sampled(self, x, num_samples, self.noise, condition, with_log_weights)

    def infer(self, x, steps=100, learning_rate=1e-2, num_samples=1, seed=None, condition=None):
        """A refined q(z|x): the encoder's posterior after `steps` Adam steps on each example's own ELBO.

        Semi-amortized inference: the model's weights stay fixed; only each example's posterior
        parameters move, so the refined ELBO closes (part of) the amortization gap.
        See `tfvae.inference.refine`.

        Args:
            x: a batch of shape (batch, *input_shape).
            steps: gradient steps, >= 0; 0 returns `encode(x)`.
            learning_rate: Adam's step size on the raw posterior parameters.
            num_samples: K, samples of z per example in each step's ELBO estimate.
            seed: an int for reproducible noise; None takes the model's next seed.
            condition: the conditions of x, for a conditional model.

        Returns:
            A TFP distribution like `encode` returns: batch shape [B], event shape [latent_dim].
        """
        return inference.refine(self, x, steps, learning_rate, num_samples, seed, condition)

    def bound(self, x, num_samples, objective="elbo", beta=1.0, step=None, condition=None):
        """The training bound (`objective` weighted by `beta`) and the true ELBO with its two terms, each [B].

        Given the optimizer's `step`, the model's `kl_schedule` makes the bound, and what it applied at
        that step (`beta`, or `kl_term`, ...) is returned beside, as scalars.
        """
        objective = objectives.get(objective)
        q = self.posterior(x, condition)
        sample = objectives.posterior_sample(self, x, q, self.noise(num_samples, tf.shape(x)[0]), condition)
        elbo, reconstruction, kl = objectives.elbo(sample)
        layers = objectives.layer_kl(sample)  # a hierarchy's KL of each layer, kl_z1 ... kl_zL
        applied = {}
        if step is None or self.kl_schedule is None:
            bound = objective(sample, beta)
        else:
            bound, applied = self.kl_schedule.bound(sample, objective, beta, step)
        return {"bound": bound, "elbo": elbo, "reconstruction": reconstruction, "kl": kl, **layers, **applied}

    # Compiled once per batch shape and K: eager evaluation of many samples would be slow.
    @tf.function(reduce_retracing=True)
    def _compiled_bound(self, x, num_samples, condition=None):
        return self.bound(x, num_samples, condition=condition)

    def _loss_and_metrics(self, x, condition=None):
        """-(the training bound's batch mean) plus the losses layers add, and the metrics' new values."""
        x = tf.cast(x, tf.float32)
        # The step is read in the graph, so a KL schedule moves at every step of a multi-step execution.
        terms = self.bound(
            x, self.num_samples, self.objective, self.beta, step=self.optimizer.iterations, condition=condition
        )
        # Gradients are summed over replicas: each one's sum is divided by the global batch size, so
        # that the sum is the gradient of the global batch's mean loss, whatever each replica's share.
        # Layers' own losses (add_loss, regularizers) count as Keras counts them.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        _, total = distribute.batch_share(tf.shape(x)[0])
        per_example = -terms["bound"]
        loss = tf.math.divide_no_nan(tf.reduce_sum(per_example), tf.cast(total, tf.float32))
        if self.losses:
            extra = tf.add_n([tf.cast(extra, tf.float32) for extra in self.losses])
            loss += extra / replicas
            per_example += extra
        self.trackers["loss"].update_state(per_example)
        for name, tracker in self.trackers.items():
            if name != "loss":
                tracker.update_state(terms[name])
        # What the KL schedule applied at this step (beta, kl_term): logged as the last step's, not as means.
        applied = {name: value for name, value in terms.items() if name not in ("bound", *self.trackers)}
        return loss, {**{name: tracker.result() for name, tracker in self.trackers.items()}, **applied}

    def train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            loss, metrics = self._loss_and_metrics(x, self._condition_of(y))
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return metrics

    def test_step(self, data):
        # The same loss as training's (current beta and objective): `val_loss` is `loss` on other data.
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self._loss_and_metrics(x, self._condition_of(y))[1]

    def predict_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        x, condition = tf.cast(x, tf.float32), self._condition_of(y)
        z = self.posterior(x, condition).mean()
        return heads.point_estimate(self.likelihood_head, self.likelihood(z, condition))

    def _condition_of(self, y):
        """The condition a step's labels y carry: y itself for a conditional model; None (labels ignored) otherwise."""
        return y if self.condition_shape is not None else None

def _forget_uninitialized_variables(model):
    """Drops the model's variables from the list of those Keras (3.15) has yet to initialize.

    Keras keeps variables made inside a StatelessScope on a global list until they are initialized;
    a build that fails part-way (out of memory) leaves them there, and the next scope's exit, in a
    later `fit` of any model, initializes them inside that fit's graph, which then fails
    (tests/test_properties.py::test_a_model_too_large_to_build_is_refused_and_leaves_keras_usable).
    """
    from keras.src.backend.common import global_state

    pending = global_state.get_global_attribute("uninitialized_variables")
    if pending:
        ours = {id(v) for v in model.variables}
        pending[:] = [v for v in pending if id(v) not in ours]


def _beta(value):
    return arguments.finite_float(value, "beta", inclusive=True)


def _as_tuple(shape):
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        return (shape,)
    if not isinstance(shape, (tuple, list)) or not shape:
        raise ValueError(f"input_shape: expected a non-empty tuple of positive ints such as (784,); got {shape!r}.")
    return tuple(shape)


def _deserialize(spec):
    return keras.saving.deserialize_keras_object(spec) if isinstance(spec, dict) else spec

