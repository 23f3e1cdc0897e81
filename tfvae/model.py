"""The variational autoencoder: a Keras model whose q(z|x), p(z) and p(x|z) are TFP distributions."""

import contextlib
import math
import numbers
import os

import keras
import numpy as np
import tensorflow as tf

from tfvae import arguments, atomic, checks, distribute, heads, inference, networks, noise, objectives, resources
from tfvae import schedules, training
from tfvae import precision as tfvae_precision
from tfvae import data as tfvae_data
from tfvae.callbacks import RestoreOnNaN


@keras.saving.register_keras_serializable(package="tfvae")
class VAE(keras.Model):
    """A variational autoencoder trained by maximizing the ELBO (or the IWAE bound) with `fit`.

    Args:
        input_shape: shape of one x, e.g. (784,) or (28, 28, 1).
        latent_dim: dimension of z.
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
        self.condition_shape = _condition_shape(condition_shape)
        self.event_shape = tuple(arguments.positive_int(d, "input_shape") for d in _as_tuple(input_shape))
        self.latent_dim = arguments.positive_int(latent_dim, "latent_dim")
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
        self.posterior_head = heads.get(
            heads.POSTERIORS, _deserialize(posterior), "posterior", latent_dim=self.latent_dim
        )
        self.prior_head = heads.get(
            heads.PRIORS, _deserialize(prior), "prior", latent_dim=self.latent_dim, event_shape=self.event_shape
        )
        self.likelihood_head = heads.get(
            heads.LIKELIHOODS, _deserialize(likelihood), "likelihood", event_shape=self.event_shape
        )

        self._beta = keras.Variable(_beta(beta), trainable=False, name="beta")
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="noise")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "elbo", "reconstruction", "kl")}
        bodies = [spec or "mlp" for spec in (encoder, decoder)]
        if all(spec in ("mlp", "gated_mlp", "conv") for spec in bodies):  # tfvae's, whose size resources knows
            # Mixed bodies are estimated as MLPs, the smallest: a refused model would certainly not fit.
            body = bodies[0] if bodies[0] == bodies[1] else "mlp"
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
            "latent_dim": self.latent_dim,
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
        # and export work before the first `fit`. What each head gives is checked against the protocol
        # here, where a mistake can be named, not at the first step (or in the export) as a shape error.
        rows = 2  # a batch of 2 tells a head's [B] from [B, 1] or a fixed size
        c = None if self.condition_shape is None else tf.zeros((rows, *self.condition_shape))
        x = tf.zeros((rows, *self.event_shape))
        latent = (self.latent_dim,), f"latent_dim is {self.latent_dim}"
        q = checks.head_distribution(lambda: self.posterior(x, c), "posterior", (rows,), *latent)
        eps = z = tf.zeros((rows, rows, self.latent_dim))  # K = 2 samples of z for each example
        head = self.posterior_head
        checks.head_log_density(
            lambda: heads.posterior_log_prob(head, q, heads.reparameterize(head, q, eps), eps),
            "posterior", (rows, rows))
        p = checks.head_distribution(lambda: self.likelihood(z, c), "likelihood", (rows, rows), self.event_shape,
                                     f"input_shape is {self.event_shape}")
        checks.head_log_density(lambda: heads.log_likelihood(self.likelihood_head, p, x), "likelihood",
                                (rows, rows))
        try:
            prior = self.prior
        except _MissingCondition:
            raise ValueError(
                f"prior: the {type(self.prior_head).__name__} head encodes inputs without a condition, so it cannot "
                f"be the prior of a conditional model (condition_shape={self.condition_shape}); use 'normal' or "
                f"'mixture'."
            ) from None
        prior = checks.head_distribution(lambda: prior, "prior", (), *latent)
        checks.head_log_density(lambda: prior.log_prob(z), "prior", (rows, rows))

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
        """features [N, F] with the flattened condition appended, [N, F + C]; features as they are without one.

        Args:
            features: the encoder body's output, or z as rows.
            condition: None, or [B, *condition_shape] (B may be 1).
            leading: the leading shape that `features`' N rows were flattened from, e.g. [K, B];
                None when the rows are the condition's own.
        """
        if (condition is None) != (self.condition_shape is None):
            raise _MissingCondition(_condition_error(self.condition_shape, condition))
        if condition is None:
            return features
        size = math.prod(self.condition_shape)
        c = tf.reshape(tf.cast(condition, features.dtype), (-1, size))
        if leading is not None:
            # The rows for [K, B] leading dimensions are the B conditions K times (or one, K B times): a tile,
            # not BROADCAST_TO, which LiteRT answered with stale rows on the first call after an empty batch.
            c = tf.tile(c, [tf.math.reduce_prod(leading) // tf.maximum(tf.shape(c)[0], 1), 1])
        return tf.concat([features, c], axis=-1)

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
        if (condition is None) != (self.condition_shape is None):
            raise ValueError(_condition_error(self.condition_shape, condition, name))
        if condition is None:
            return None
        c = checks.as_batch(condition, self.condition_shape, name)
        if rows is not None and c.shape[0] is not None and c.shape[0] != rows:
            raise ValueError(f"{name}: expected one condition per example ({rows} rows); got {c.shape[0]} rows.")
        return c

    def as_sample_condition(self, condition, num_samples, name="condition"):
        """`as_condition` for `sample`: one condition (shape `condition_shape`) for every draw, or one per draw."""
        if self.condition_shape is not None and condition is not None:
            if checks.as_array(condition, name).shape == self.condition_shape:
                condition = [condition]  # one condition, drawn from num_samples times
        condition = self.as_condition(condition, name=name)
        if condition is not None and condition.shape[0] not in (1, num_samples):
            raise ValueError(
                f"{name}: expected one condition of shape {self.condition_shape} or one per draw "
                f"({num_samples} rows); got {condition.shape[0]} rows."
            )
        return condition

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

    def elbo(self, x, num_samples=1, condition=None):
        """The ELBO of each x (of log p(x|c) given the condition), in nats: [B]. More samples lower its variance, not its bias."""
        num_samples = arguments.positive_int(num_samples, "num_samples")
        resources.check_step(num_samples * math.prod(self.event_shape), "num_samples")  # all K at once
        x = self.as_input(x)
        condition = self.as_condition(condition, x.shape[0])
        elbo = self._compiled_bound(x, num_samples, condition)["elbo"]
        return checks.finite_estimate(elbo, "elbo", x=x, condition=condition)

    def log_prob(self, x, num_samples=1000, precision="float32", condition=None):
        """The importance-weighted estimate of log p(x) (log p(x|c) given the condition) with K = num_samples, in nats: [B].

        A lower bound in expectation that tightens to log p(x) as K grows (Burda et al. 2015). The K
        samples are taken in chunks, so memory stays bounded for K = 5000.

        precision: "float32", or "bfloat16" for the decoder's matrix products (about twice as
            fast on CPUs with avx512_bf16 or AMX; see `tfvae.precision`).
        """
        num_samples = arguments.positive_int(num_samples, "num_samples")
        precision = tfvae_precision.check(precision)
        # Chunked, so memory is bounded; without a progress bar, one example's K samples are one step.
        resources.check_step(num_samples * math.prod(self.event_shape), "num_samples")
        x = self.as_input(x)
        condition = self.as_condition(condition, x.shape[0])
        log_prob = self.importance_sampled(x, tf.constant(num_samples), precision, condition)["log_prob"]
        return checks.finite_estimate(log_prob, "log_prob", x=x, condition=condition)

    def importance_sampled(self, x, num_samples, precision="float32", condition=None):
        """`tfvae.objectives.importance_sampled` with the model's noise, compiled: log p(x) and the ELBO's terms.

        The graph is traced with the likelihood's sum over pixels fused by XLA (`heads.fused_sums`).

        precision: "float32" or "bfloat16", the decoder's compute precision (see `tfvae.precision`).
        condition: the conditions of x for a conditional model (then log p(x|c)), else None.
        """
        with heads.fused_sums():
            if precision == "float32":
                return self._importance_sampled(x, num_samples, condition)
            with tfvae_precision.computing_in([self.decoder, self.likelihood_head], tfvae_precision.check(precision)):
                return self._importance_sampled_bfloat16(x, num_samples, condition)

    # One compiled function per precision: a layer's compute dtype is fixed when a graph is traced.
    @tf.function(reduce_retracing=True)
    def _importance_sampled(self, x, num_samples, condition=None):
        return objectives.importance_sampled(self, x, num_samples, self.noise, condition)

    @tf.function(reduce_retracing=True)
    def _importance_sampled_bfloat16(self, x, num_samples, condition=None):
        return objectives.importance_sampled(self, x, num_samples, self.noise, condition)

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
        applied = {}
        if step is None or self.kl_schedule is None:
            bound = objective(sample, beta)
        else:
            bound, applied = self.kl_schedule.bound(sample, objective, beta, step)
        return {"bound": bound, "elbo": elbo, "reconstruction": reconstruction, "kl": kl, **applied}

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
        for name in ("elbo", "reconstruction", "kl"):
            self.trackers[name].update_state(terms[name])
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

    # Under several replicas Keras's distributed loop is replaced where it fails (see tfvae.distribute).

    def make_train_function(self, force=False):
        if not distribute.several_replicas(self):
            return super().make_train_function(force)
        if self.train_function is None or force:
            self.train_function = distribute.step_function(self, self.train_step)
        return self.train_function

    def make_test_function(self, force=False):
        if not distribute.several_replicas(self):
            return super().make_test_function(force)
        if self.test_function is None or force:
            self.test_function = distribute.step_function(self, self.test_step)
        return self.test_function

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras (3.15) builds a model made under a strategy from a batch it draws from the data and
        # reduces across replicas. This model is built when made: only the optimizer may need building,
        # which takes no data, and drawing none keeps the data's epochs where a single device has them.
        built = all(layer.built for layer in self._flatten_layers())
        compiled_built = all(part is None or part.built for part in (self._compile_metrics, self._compile_loss))
        if not (built and compiled_built):
            return super()._maybe_symbolic_build(iterator, data_batch)
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)
        return None

    def _condition_of(self, y):
        """The condition a step's labels y carry: y itself for a conditional model; None (labels ignored) otherwise."""
        return y if self.condition_shape is not None else None

    def compile(self, optimizer="adam", steps_per_execution=None, **kwargs):
        """Like `keras.Model.compile`; the loss is the model's own (the negative bound).

        `optimizer="adam"` is `tfvae.training.Adam` (Keras's Adam with TF's fused update).
        `steps_per_execution=None` means `tfvae.training.STEPS_PER_EXECUTION` batches per host round
        trip, not Keras's 1: the host launches one compiled loop per that many batches instead of one
        call per batch, which is much of the time of a small model's step. Batch-level callbacks then
        see every `steps_per_execution`-th batch; epoch-level ones are unaffected.
        """
        if optimizer == "adam":
            optimizer = training.Adam()
        steps_per_execution = checks.keras_count(steps_per_execution, "steps_per_execution")
        self._default_steps_per_execution = steps_per_execution is None
        if steps_per_execution is None:
            steps_per_execution = training.default_steps_per_execution(self)
        super().compile(optimizer=optimizer, steps_per_execution=steps_per_execution, **kwargs)

    def compile_from_config(self, config):
        # Keras skips compile() when loading a model that overrides it; this restores the optimizer
        # (and its state, which is loaded right after) so a loaded model can go on training.
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    def _fit_steps_per_execution(self, steps=(), data=None, batch_size=None):
        """Fits the default steps_per_execution to the step counts a call asks for or implies;
        a `steps_per_execution` the user chose is left as it is."""
        if not getattr(self, "_default_steps_per_execution", False):
            return
        best = training.fitted_steps_per_execution(training.default_steps_per_execution(self), steps, data, batch_size)
        if best != self.steps_per_execution:
            self.steps_per_execution = best
            self.train_function = self.test_function = self.predict_function = None

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, **kwargs):
        """Like `keras.Model.fit`; labels `y`, if any, are ignored, except by a conditional model,
        which takes them as the conditions (a dataset then yields (x, condition) pairs). Compiles with
        Adam if needed.

        In-memory arrays take `tfvae.data.make_dataset`'s pipeline (see
        `tfvae.training.arrays_as_datasets`), with Keras's `batch_size`, `shuffle` and
        `validation_split` kept (a conditional model's conditions travel with their x).
        """
        batch_size = checks.keras_count(batch_size)
        epochs = arguments.positive_int(epochs, "epochs")
        _check_fit_options(kwargs)
        x = self._check_data(x, "x")
        # A step decodes K samples of each example of the batch at once (a dataset's batch is not known here).
        rows = 1 if isinstance(x, tf.data.Dataset) else batch_size or training.KERAS_BATCH_SIZE
        resources.check_step(rows * self.num_samples * math.prod(self.event_shape),
                             f"num_samples={self.num_samples} with batch_size={rows}")
        y = self._check_conditions(x, y, "condition (y)")
        if kwargs.get("validation_data") is not None:
            kwargs["validation_data"] = self._check_data(kwargs["validation_data"], "validation_data", labelled=True)
            kwargs["validation_data"] = self._check_labelled_conditions(kwargs["validation_data"], "validation_data")
        if not self.compiled:
            self.compile()
        if not isinstance(x, tf.data.Dataset):
            conditions = None if self.condition_shape is None else y
            x, kwargs = training.arrays_as_datasets(x, batch_size, kwargs, conditions)
            if isinstance(x, tf.data.Dataset):  # the labels (ignored, or the conditions) and the batch size are in it
                y = batch_size = None
        self._fit_steps_per_execution((kwargs.get("steps_per_epoch"), kwargs.get("validation_steps")), x, batch_size)
        validation = kwargs.get("validation_data")
        callbacks = training.StepCallbacks(
            _with_defaults(callbacks, verbose), self, verbose, epochs=epochs, add_history=True,
            steps=kwargs.get("steps_per_epoch") or training.batches_per_epoch(x, batch_size),
            test_steps=kwargs.get("validation_steps") or training.batches_per_epoch(
                validation, kwargs.get("validation_batch_size") or batch_size))
        if isinstance(x, tf.data.Dataset):
            # A dataset shuffles itself (tfvae.data.make_dataset does): Keras's default shuffle=True
            # would only warn that it is ignored.
            kwargs.setdefault("shuffle", False)
        x = self._checked_in_pipeline(x, "x")
        if isinstance(kwargs.get("validation_data"), tf.data.Dataset):
            kwargs["validation_data"] = self._checked_in_pipeline(kwargs["validation_data"], "validation_data")
        self._fitting = True  # `evaluate` is then Keras's validation pass, on data checked above
        try:
            with _data_errors():
                return super().fit(x, y, batch_size, epochs, verbose, callbacks, **kwargs)
        finally:
            self._fitting = False

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", *args, callbacks=None, **kwargs):
        """Like `keras.Model.evaluate`: the mean loss, ELBO, reconstruction and KL."""
        if getattr(self, "_fitting", False):
            return super().evaluate(x, y, batch_size, verbose, *args, callbacks=callbacks, **kwargs)
        batch_size = checks.keras_count(batch_size)
        _check_keras_counts(kwargs, ("steps",))
        x = self._check_data(x, "x")
        y = self._check_conditions(x, y, "condition (y)")
        if not self.compiled:
            self.compile()
        self._fit_steps_per_execution((kwargs.get("steps"),), x, batch_size)
        x = self._checked_in_pipeline(x, "x")
        with _data_errors():
            steps = kwargs.get("steps") or training.batches_per_epoch(x, batch_size)
            callbacks = training.StepCallbacks(_with_defaults(callbacks, verbose), self, verbose, steps, test_steps=steps)
            return super().evaluate(x, y, batch_size, verbose, *args, callbacks=callbacks, **kwargs)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None, condition=None):
        """Like `keras.Model.predict`: the reconstruction of each x, after the same checks as `encode`.

        A conditional model takes the conditions of an array x as `condition=`, of a dataset as its
        (x, condition) pairs.
        """
        batch_size = checks.keras_count(batch_size)
        steps = checks.keras_count(steps, "steps")
        x = self._check_data(x, "x")
        if isinstance(x, tf.data.Dataset):
            if condition is not None:
                raise ValueError("condition: a dataset carries its own conditions, as (x, condition) pairs; "
                                 "got condition= as well.")
            self._check_conditions(x, None, "condition")
        else:
            condition = self.as_condition(condition, len(x))
            if condition is not None:  # Keras reads a tuple as x alone: the pairs go as a dataset, checked above
                x = tfvae_data.mark_checked(
                    tfvae_data.make_dataset(np.asarray(x), batch_size or training.KERAS_BATCH_SIZE, shuffle=False,
                                            labels=condition.numpy())
                )
                batch_size = None
        x = self._checked_in_pipeline(x, "x")
        with _data_errors():
            callbacks = training.StepCallbacks(_with_defaults(callbacks, verbose, nan_guard=False), self, verbose,
                                               steps or training.batches_per_epoch(x, batch_size))
            return super().predict(x, batch_size, verbose, steps, callbacks)

    def save(self, filepath, overwrite=True, **kwargs):
        """Like `keras.Model.save`, atomically: a save that fails part-way leaves the previous file as
        it was (or none), never a truncated one. The temporary file sits beside `filepath`.

        Under a multi-worker strategy only the chief writes (`strategy.extended.should_checkpoint`):
        the workers hold the same weights, and their writes to one path would race."""
        if not self.distribute_strategy.extended.should_checkpoint:
            return None
        if not isinstance(filepath, (str, os.PathLike)):
            return super().save(filepath, overwrite=overwrite, **kwargs)
        filepath = os.fspath(filepath)
        if os.path.exists(filepath) and not overwrite:
            if not keras.utils.io_utils.ask_to_proceed_with_overwrite(filepath):
                return None
        with atomic.atomic_path(filepath) as tmp:
            super().save(tmp, overwrite=True, **kwargs)
        return None

    def save_own_variables(self, store):
        super().save_own_variables(store)
        # Where the noise stream is: Keras saves layers' weights, not their seed generators, so a loaded
        # model (`tfvae train --resume`) would draw its first batch's noise again.
        store[_SEED_STATE] = self.seed_generator.state

    def load_own_variables(self, store):
        keys = list(store.keys())
        if _SEED_STATE in keys:  # absent from files saved before it was kept
            self.seed_generator.state.assign(store[_SEED_STATE])
        super().load_own_variables({key: store[key] for key in keys if key != _SEED_STATE})

    def _checked_in_pipeline(self, data, name):
        """A tf.data dataset whose every x is checked (finite, in the likelihood's support) as it is read,
        unless tfvae made or checked its values; anything else as it is."""
        if not isinstance(data, tf.data.Dataset) or tfvae_data.is_checked(data):
            return data

        def check(*element):  # x, or (x, labels, ...)
            valid = [checks.support_assertion(tf.cast(element[0], tf.float32), self.likelihood_head, name)]
            if self.condition_shape is not None:
                valid.append(checks.finite_assertion(tf.cast(element[1], tf.float32), f"{name}'s conditions"))
            with tf.control_dependencies(valid):
                checked = tuple(tf.identity(e) for e in element)
            return checked if len(checked) > 1 else checked[0]

        return data.map(check)

    def _check_data(self, data, name, labelled=False):
        return checks.check_training_data(data, self.event_shape, name, self.likelihood_head, labelled)

    def _check_conditions(self, x, y, name):
        """`fit`'s or `evaluate`'s y, checked as conditions for a conditional model (a dataset x must
        then yield (x, condition) pairs); for an unconditional model y as it was given, labels ignored."""
        if self.condition_shape is None:
            return y
        if isinstance(x, tf.data.Dataset):
            checks.check_dataset_conditions(x, self.condition_shape, "x")
            return y
        if y is None:
            raise ValueError(
                f"condition: this conditional model (condition_shape={self.condition_shape}) trains on x "
                f"with its conditions: pass them as y, shape (batch, {', '.join(map(str, self.condition_shape))})."
            )
        return self.as_condition(y, len(x), name).numpy()

    def _check_labelled_conditions(self, data, name):
        """validation_data of a conditional model: (x, conditions) arrays or a dataset of such pairs, checked."""
        if self.condition_shape is None:
            return data
        if isinstance(data, tf.data.Dataset):
            checks.check_dataset_conditions(data, self.condition_shape, name)
            return data
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise ValueError(
                f"condition: a conditional model's {name} is a pair (x, conditions) or a dataset of such pairs; "
                f"got {type(data).__name__}{'' if not isinstance(data, (tuple, list)) else f' of {len(data)}'}."
            )
        return data[0], self.as_condition(data[1], len(data[0]), f"condition ({name}[1])").numpy()


_SEED_STATE = "seed_generator_state"  # the noise stream's state, in the model's own variables of a .keras file


def _with_defaults(callbacks, verbose, nan_guard=True):
    """The user's callbacks, with tfvae's progress bar when one is shown and the NaN guard in training."""
    callbacks = list(callbacks or [])
    if verbose != 0 and not any(isinstance(c, keras.callbacks.ProgbarLogger) for c in callbacks):
        callbacks.append(training.Progbar())
    if nan_guard:
        callbacks.append(RestoreOnNaN())
    return callbacks


@contextlib.contextmanager
def _data_errors():
    """Turns the graph's invalid-data assertion (see `checks.support_assertion`) into a ValueError."""
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        if checks.INVALID_DATA_MARK not in str(error):
            raise
        # TF prints the assertion's data as "[mark] [message]" with quotes escaped.
        message = str(error).split(checks.INVALID_DATA_MARK, 1)[1].split("\n")[0]
        message = message.strip(" []").replace("\\'", "'")
        raise ValueError(message + ".") from None


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


class _MissingCondition(ValueError):
    """A hook of a conditional model called without a condition, or of an unconditional one with one."""


def _condition_shape(value):
    """`condition_shape`: None, or a non-empty shape of positive ints as a tuple."""
    if value is None:
        return None
    shape = (value,) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if not isinstance(shape, (tuple, list)) or not shape:
        raise ValueError(f"condition_shape: expected None or a non-empty tuple of positive ints such as (10,); got {value!r}.")
    return tuple(arguments.positive_int(d, "condition_shape") for d in shape)


def _condition_error(condition_shape, condition, name="condition"):
    if condition_shape is None:
        return (
            f"{name}: this model is unconditional (condition_shape=None) and takes no condition; "
            f"got {type(condition).__name__}."
        )
    return (
        f"{name}: this model is conditional (condition_shape={condition_shape}) and needs a condition per example, "
        f"shape (batch, {', '.join(map(str, condition_shape))}); got None."
    )


def _check_fit_options(kwargs):
    """Checks the options of `fit` that Keras takes on trust: it reads a 0 count as its default,
    divides by `validation_freq`, and holds out x[floor(N (1 - validation_split)):], so a split outside
    (0, 1) would silently be another split."""
    _check_keras_counts(kwargs, ("steps_per_epoch", "validation_steps", "validation_batch_size"))
    if "validation_freq" in kwargs:
        kwargs["validation_freq"] = arguments.positive_int(kwargs["validation_freq"], "validation_freq")
    if kwargs.get("shuffle", True) not in (True, False, "batch"):
        raise ValueError(f"shuffle: expected True, False or 'batch'; got {kwargs['shuffle']!r}.")
    split = kwargs.get("validation_split")
    if split and (isinstance(split, bool) or not isinstance(split, numbers.Real) or not 0 < split < 1):
        raise ValueError(f"validation_split: expected the fraction of x to hold out, in [0, 1); got {split!r}.")


def _check_keras_counts(kwargs, names):
    """Checks (and makes ints of) the counts among `names` that the user passed to Keras in `kwargs`."""
    for name in names:
        if name in kwargs:
            kwargs[name] = checks.keras_count(kwargs[name], name)


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

