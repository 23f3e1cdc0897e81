"""The variational autoencoder: a Keras model whose q(z|x), p(z) and p(x|z) are TFP distributions."""

import math

import keras
import tensorflow as tf

from tfvae import checks, distributions, inference, networks, noise, objectives

OBJECTIVES = ("elbo", "iwae")

# Batches per host round trip in `fit`/`evaluate` (see `VAE.compile`); its effect is measured by
# `python benchmarks/throughput.py --levers` (lever "steps_per_execution=1"). 100 rather than 32:
# +3-4% in interleaved fits of the benchmark's MLP VAE (200 batches an epoch), 200 no better.
STEPS_PER_EXECUTION = 100


@keras.saving.register_keras_serializable(package="tfvae")
class VAE(keras.Model):
    """A variational autoencoder trained by maximizing the ELBO (or the IWAE bound) with `fit`.

    Args:
        input_shape: shape of one x, e.g. (784,) or (28, 28, 1).
        latent_dim: dimension of z.
        encoder: body from x to features: None or "mlp" (MLP [200, 200] tanh), "conv", or any Keras layer.
        decoder: body from z to features: None or "mlp", "conv", or any Keras layer.
        likelihood: p(x|z): "bernoulli", "gaussian", or a head from `tfvae.distributions`.
        prior: p(z): "normal" (N(0, I)), "mixture" (learned mixture of Gaussians), or a head.
        posterior: q(z|x): "diagonal", "full" (full covariance), or a head.
        beta: weight of the KL term in the training loss (1 is the true ELBO).
        num_samples: K, the samples of z per example in the training objective.
        objective: "elbo" (the mean of K single-sample ELBOs) or "iwae" (the K-sample IWAE bound).
        seed: seed of the model's noise; None draws it from `keras.utils.set_random_seed`'s state.

    Example:
        >>> model = tfvae.VAE(input_shape=(64,), latent_dim=8)
        >>> model.fit(x_train, epochs=10, batch_size=100)
        >>> model.log_prob(x_test, num_samples=1000)  # [batch] nats
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.event_shape = tuple(checks.positive_int(d, "input_shape") for d in _as_tuple(input_shape))
        self.latent_dim = checks.positive_int(latent_dim, "latent_dim")
        self.num_samples = checks.positive_int(num_samples, "num_samples")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective: expected one of {list(OBJECTIVES)}; got {objective!r}.")
        self.objective = objective
        self.seed = seed
        # Heads given by name are saved by name; others as serialized layers.
        self._head_names = {
            "likelihood": likelihood if isinstance(likelihood, str) else None,
            "prior": prior if isinstance(prior, str) else None,
            "posterior": posterior if isinstance(posterior, str) else None,
        }

        self.encoder = networks.get(_deserialize(encoder), "encoder", self.event_shape)
        self.decoder = networks.get(_deserialize(decoder), "decoder", self.event_shape)
        self.posterior_head = distributions.get(
            distributions.POSTERIORS, _deserialize(posterior), "posterior", latent_dim=self.latent_dim
        )
        self.prior_head = distributions.get(
            distributions.PRIORS, _deserialize(prior), "prior", latent_dim=self.latent_dim
        )
        self.likelihood_head = distributions.get(
            distributions.LIKELIHOODS, _deserialize(likelihood), "likelihood", event_shape=self.event_shape
        )
        _check_head_matches(self.posterior_head, "posterior", "latent_dim", self.latent_dim)
        _check_head_matches(self.prior_head, "prior", "latent_dim", self.latent_dim)
        _check_head_matches(self.likelihood_head, "likelihood", "event_shape", self.event_shape)

        self._beta = keras.Variable(float(beta), trainable=False, name="beta")
        self.seed_generator = keras.random.SeedGenerator(seed, name="noise")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "elbo", "reconstruction", "kl")}
        self.build((None, *self.event_shape))

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
        }

    def build(self, input_shape):
        # One zero batch through every part creates all weights now, so `save`/`load_model`,
        # `summary` and export work before the first `fit`.
        self.decode(self.encode(tf.zeros((1, *self.event_shape))).mean())
        self.prior_head.distribution()

    @property
    def beta(self):
        """The KL weight; a variable, so callbacks can change it without retracing."""
        return self._beta.value

    @beta.setter
    def beta(self, value):
        self._beta.assign(float(value))

    @property
    def prior(self):
        """p(z), a TFP distribution with event shape [latent_dim]."""
        return self.prior_head.distribution()

    @property
    def metrics(self):
        return list(self.trackers.values())

    def encode(self, x):
        """q(z|x): a TFP distribution with batch shape [B] and event shape [latent_dim]."""
        x = self._as_batch(x)
        return self.posterior_head.distribution(self.posterior_head(self.encoder(x)))

    def decode(self, z):
        """p(x|z): a TFP distribution with batch shape [B] and event shape `input_shape`."""
        z = checks.as_batch(z, (self.latent_dim,), name="z")
        return self.likelihood_head.distribution(self.likelihood_head(self.decoder(z)))

    def reconstruct(self, x):
        """The mean of p(x|z) at the posterior mean z = E_q[z]."""
        return self.decode(self.encode(x).mean()).mean()

    def call(self, x):
        return self.reconstruct(x)

    def sample(self, num_samples, seed=None):
        """Means of p(x|z) for z ~ p(z): [num_samples, *input_shape].

        Args:
            num_samples: how many x to draw.
            seed: an int for a reproducible draw; None takes the model's next seed.
        """
        num_samples = checks.positive_int(num_samples, "num_samples")
        z = self.prior.sample(num_samples, seed=tf.cast(self._stateless_seed(seed), tf.int32))
        return self.decode(z).mean()

    def elbo(self, x, num_samples=1):
        """The ELBO of each x, in nats: [B]. More samples lower its variance, not its bias."""
        num_samples = checks.positive_int(num_samples, "num_samples")
        return self._compiled_bounds(self._as_batch(x), num_samples)["elbo"]

    def log_prob(self, x, num_samples=1000):
        """The importance-weighted estimate of log p(x) with K = num_samples, in nats: [B].

        A lower bound in expectation that tightens to log p(x) as K grows (Burda et al. 2015). The K
        samples are taken in chunks, so memory stays bounded for K = 5000.
        """
        num_samples = checks.positive_int(num_samples, "num_samples")
        x = self._as_batch(x)
        chunk = objectives.samples_per_chunk(num_samples, x.shape[0] or 256, math.prod(self.event_shape))
        running, count = None, 0
        while count < num_samples:
            k = min(chunk, num_samples - count)
            running, count = objectives.log_mean_exp_update(running, count, self._compiled_log_weights(x, k))
        return running

    def infer(self, x, steps=100, learning_rate=1e-2, num_samples=1, seed=None):
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

        Returns:
            A TFP distribution like `encode` returns: batch shape [B], event shape [latent_dim].
        """
        return inference.refine(self, x, steps, learning_rate, num_samples, seed)

    def _stateless_seed(self, seed=None):
        """A stateless seed pair: from the int `seed`, or the model's next one when None."""
        return self.seed_generator.next() if seed is None else tf.constant([seed, 0], tf.int64)

    def _as_batch(self, x, name="x"):
        return checks.as_batch(x, self.event_shape, name, self.likelihood_head.check_support)

    def _standard_normal(self, num_samples, batch_size):
        """eps ~ N(0, I), [K, B, latent_dim], drawn for the whole global batch and sliced per replica.

        Under a tf.distribute strategy each replica then sees the noise a single device would give
        the same examples, so distributed training matches single-device training draw for draw.
        """
        context = tf.distribute.get_replica_context()
        replicas, replica = 1, 0
        if context is not None:
            replicas, replica = context.num_replicas_in_sync, context.replica_id_in_sync_group
        seed = tf.cast(self.seed_generator.next(), tf.int64)
        eps = noise.standard_normal((num_samples, batch_size * replicas, self.latent_dim), seed)
        return eps[:, replica * batch_size : (replica + 1) * batch_size]

    def _sample_posterior(self, x, num_samples):
        q = self.encode(x)
        eps = self._standard_normal(num_samples, tf.shape(x)[0])
        return q, self.posterior_head.reparameterize(q, eps)

    def _log_likelihood(self, x, z):
        """log p(x|z_k) for z of shape [K, B, latent_dim]: [K, B]."""
        k, b = tf.shape(z)[0], tf.shape(z)[1]
        params = self.likelihood_head(self.decoder(tf.reshape(z, (-1, self.latent_dim))))
        params = tf.reshape(params, tf.concat([[k, b], tf.shape(params)[1:]], axis=0))
        return self.likelihood_head.distribution(params).log_prob(x)

    def _log_weights(self, x, num_samples):
        q, z = self._sample_posterior(x, num_samples)
        return objectives.log_importance_weights(self._log_likelihood(x, z), q, self.prior, z)

    def _bounds(self, x, num_samples, objective="elbo", beta=1.0):
        """The training bound and the ELBO with its two terms, each [B]."""
        q, z = self._sample_posterior(x, num_samples)
        log_likelihood = self._log_likelihood(x, z)
        p = self.prior
        bound, reconstruction, kl = objectives.elbo(log_likelihood, q, p, z, beta)
        if objective == "iwae":
            bound = objectives.iwae(objectives.log_importance_weights(log_likelihood, q, p, z, beta))
        return {"bound": bound, "elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}

    # Compiled once per (batch shape, K): eager evaluation of K = 5000 samples would be slow.
    @tf.function(reduce_retracing=True)
    def _compiled_bounds(self, x, num_samples):
        return self._bounds(x, num_samples)

    @tf.function(reduce_retracing=True)
    def _compiled_log_weights(self, x, num_samples):
        return self._log_weights(x, num_samples)

    def _update_metrics(self, terms):
        self.trackers["loss"].update_state(-terms["bound"])
        for name in ("elbo", "reconstruction", "kl"):
            self.trackers[name].update_state(terms[name])
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        x = tf.cast(x, tf.float32)
        with tf.GradientTape() as tape:
            terms = self._bounds(x, self.num_samples, self.objective, self.beta)
            # Gradients are summed over replicas: each one's mean is scaled so that the sum is
            # the gradient of the global batch's mean loss.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            loss = -tf.reduce_mean(terms["bound"]) / replicas
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.trainable_variables)
        # Keras's Adam is ~12 small ops and as many passes over memory per variable; the fused
        # kernel of the same update is one of each (~20% less CPU per step here; lever "keras_adam"
        # of `benchmarks/throughput.py --levers`).
        if not _apply_adam_fused(self.optimizer, gradients, self.trainable_variables):
            self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return self._update_metrics(terms)

    def test_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self._update_metrics(self._bounds(tf.cast(x, tf.float32), self.num_samples, self.objective))

    def compile(self, optimizer="adam", steps_per_execution=None, **kwargs):
        """Like `keras.Model.compile`; the loss is the model's own (the negative bound).

        `steps_per_execution=None` means `STEPS_PER_EXECUTION` batches per host round trip, not
        Keras's 1: the host launches one compiled loop per that many batches instead of one call
        per batch, which is much of the time of a small model's step. Batch-level callbacks and
        the progress bar then see every `steps_per_execution`-th batch; epoch-level ones are
        unaffected. Under a strategy with several replicas it means 1: Keras 3.15's multi-step
        loop fails there ("You must feed a value for placeholder tensor").
        """
        self._default_steps_per_execution = steps_per_execution is None
        if steps_per_execution is None:
            replicas = self.distribute_strategy.num_replicas_in_sync
            steps_per_execution = STEPS_PER_EXECUTION if replicas == 1 else 1
        super().compile(optimizer=optimizer, steps_per_execution=steps_per_execution, **kwargs)

    def compile_from_config(self, config):
        # Keras skips compile() when loading a model that overrides it; this restores the optimizer
        # (and its state, which is loaded right after) so a loaded model can go on training.
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    def _fit_steps_per_execution(self, steps=(), data=None, batch_size=None):
        """Fits tfvae's default steps_per_execution to the step counts a call asks for or implies.

        Keras runs whole executions, so `steps_per_epoch=7` with 100 steps per execution would run
        more batches an epoch: explicit counts get a divisor of theirs. Finite data just stops early,
        but then callbacks and the progress bar count steps past its end: its batch count gets a
        divisor between half the default and the default if it has one, else the default capped at
        that count. A `steps_per_execution` the user chose is left as it is.
        """
        if not getattr(self, "_default_steps_per_execution", False):
            return
        largest = STEPS_PER_EXECUTION if self.distribute_strategy.num_replicas_in_sync == 1 else 1
        steps = [s for s in steps if s]
        if steps:
            best = next(d for d in range(largest, 0, -1) if all(s % d == 0 for s in steps))
        else:
            batches = _batches_per_epoch(data, batch_size)
            divisors = [d for d in range(largest, (largest - 1) // 2, -1) if batches and batches % d == 0]
            best = divisors[0] if divisors else min(largest, batches or largest)
        if best != self.steps_per_execution:
            self.steps_per_execution = best
            self.train_function = self.test_function = self.predict_function = None

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, **kwargs):
        """Like `keras.Model.fit`; labels `y`, if any, are ignored. Compiles with Adam if needed."""
        self._check_data(x, "x")
        if kwargs.get("validation_data") is not None:
            self._check_data(kwargs["validation_data"], "validation_data")
        if not self.compiled:
            self.compile()
        self._fit_steps_per_execution((kwargs.get("steps_per_epoch"), kwargs.get("validation_steps")), x, batch_size)
        callbacks = [*(callbacks or []), checks.TerminateOnNaN()]
        if isinstance(x, tf.data.Dataset):
            # A dataset shuffles itself (tfvae.data.make_dataset does): Keras's default shuffle=True
            # would only warn that it is ignored.
            kwargs.setdefault("shuffle", False)
        return super().fit(x, y, batch_size, epochs, verbose, callbacks, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, *args, **kwargs):
        """Like `keras.Model.evaluate`: the mean loss, ELBO, reconstruction and KL."""
        # `fit` evaluates validation_data through here every epoch: it was checked once already,
        # and changing steps_per_execution mid-fit would retrace the training step.
        if not kwargs.get("_use_cached_eval_dataset"):
            self._check_data(x, "x")
            if not self.compiled:
                self.compile()
            self._fit_steps_per_execution((kwargs.get("steps"),), x, batch_size)
        return super().evaluate(x, y, batch_size, *args, **kwargs)

    def _check_data(self, data, name):
        checks.check_training_data(data, self.event_shape, name, self.likelihood_head.check_support)


def _apply_adam_fused(optimizer, gradients, variables):
    """Applies a plain `keras.optimizers.Adam` step with TF's fused kernel; False if it cannot.

    The update is Adam's own, on the optimizer's own slots and step counter: m += (g - m)(1 - b1),
    v += (g^2 - v)(1 - b2), w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps). Anything the
    kernel does not cover (clipping, weight decay, EMA, AMSGrad, gradient accumulation, loss
    scaling, several replicas whose gradients must be all-reduced) goes through `apply_gradients`.
    """
    plain = (
        type(optimizer) is keras.optimizers.Adam
        and not optimizer.amsgrad
        and not optimizer.use_ema
        and optimizer.weight_decay is None
        and optimizer.clipnorm is None
        and optimizer.clipvalue is None
        and optimizer.global_clipnorm is None
        and optimizer.gradient_accumulation_steps is None
        and optimizer.loss_scale_factor is None
        and tf.distribute.get_strategy().num_replicas_in_sync == 1
        and all(g is not None for g in gradients)
        and all(v.dtype == "float32" and not v.overwrite_with_gradient for v in variables)
        and hasattr(optimizer, "_momentums")
    )
    if not plain:
        return False
    if not optimizer.built:
        optimizer.build(variables)
    step = tf.cast(optimizer.iterations + 1, tf.float32)
    beta_1, beta_2 = tf.constant(optimizer.beta_1, tf.float32), tf.constant(optimizer.beta_2, tf.float32)
    hyperparameters = {
        "beta1_power": tf.pow(beta_1, step),
        "beta2_power": tf.pow(beta_2, step),
        "lr": tf.cast(optimizer.learning_rate, tf.float32),
        "beta1": beta_1,
        "beta2": beta_2,
        "epsilon": tf.constant(optimizer.epsilon, tf.float32),
    }
    for gradient, variable in zip(gradients, variables):
        index = optimizer._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.value.handle,
            m=optimizer._momentums[index].value.handle,
            v=optimizer._velocities[index].value.handle,
            grad=tf.cast(gradient, tf.float32),
            **hyperparameters,
        )
    optimizer.iterations.assign_add(1)
    return True


def _batches_per_epoch(data, batch_size):
    """Batches in one pass over an array (Keras's default batch size is 32) or a finite dataset; else None."""
    if isinstance(data, tf.data.Dataset):
        cardinality = int(data.cardinality())
        return cardinality if cardinality > 0 else None
    return math.ceil(len(data) / (batch_size or 32)) if hasattr(data, "__len__") else None


def _as_tuple(shape):
    if isinstance(shape, int):
        return (shape,)
    if not isinstance(shape, (tuple, list)) or not shape:
        raise ValueError(f"input_shape: expected a non-empty tuple of positive ints such as (784,); got {shape!r}.")
    return tuple(shape)


def _deserialize(spec):
    return keras.saving.deserialize_keras_object(spec) if isinstance(spec, dict) else spec


def _check_head_matches(head, argument, attribute, expected):
    if getattr(head, attribute) != expected:
        raise ValueError(
            f"{argument}: the head's {attribute} is {getattr(head, attribute)}, but the model's is {expected}."
        )
