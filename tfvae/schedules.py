"""KL schedules: the KL term of the training loss as a function of the optimizer's step t.

    Linear     beta(t) = max_beta * min(1, t / steps)                         (a step-level warm-up)
    Cyclical   beta(t) = max_beta * min(1, tau / ratio), tau = (t mod period) / period    (Fu et al. 2019)
    FreeBits   KL term = sum_d max(nats, mean_batch KL_d)                         (Kingma et al. 2016)
    Capacity   KL term = gamma * |mean_batch KL - C(t)|, C(t) = max_capacity * min(1, t / steps)
                                                                              (Burgess et al. 2018)

t is the optimizer's `iterations` (0 at the first step), read in the graph at every step: a
schedule moves within one compiled execution of `steps_per_execution` steps, where a batch
callback would see only its last step, and a resumed model goes on from its saved step count.
The model's `beta` multiplies what a schedule gives (beta * beta(t), or beta * the KL term), so
`tfvae.callbacks.KLWarmup` can still ramp it. The ELBO, reconstruction and KL that `fit` logs stay
the true ones; the schedule adds the value it applied at the last step: `beta`, or `kl_term` (and
`capacity`).

Example:
    >>> model = tfvae.VAE(input_shape=(784,), kl_schedule=tfvae.schedules.Cyclical(period=1000))
    >>> model = tfvae.VAE(input_shape=(784,), kl_schedule="free_bits:nats=0.25")
"""

import keras
import tensorflow as tf
from tensorflow_probability import distributions as tfd

from tfvae import distribute, objectives, schedule_specs


class Schedule:
    """The base of KL schedules. `schedule(step)` is the scheduled value at step t (a tensor; steps may
    be Python or numpy ints or arrays); `bound(sample, objective, beta, step)` is the training bound."""

    def __call__(self, step):
        raise NotImplementedError

    def bound(self, sample, objective, beta, step):
        """The training bound at `step`, [B], and what the schedule applied there, {name: scalar}.

        Args:
            sample: a `tfvae.objectives.PosteriorSample`.
            objective: the model's objective, `(sample, beta) -> bound [B]`.
            beta: the model's KL weight.
            step: the optimizer's step count, a scalar integer tensor.
        """
        raise NotImplementedError

    def check(self, model):
        """Raises a ValueError naming kl_schedule if the schedule cannot train `model`."""

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class _Weight(Schedule):
    """A schedule of beta: the objective, whatever it is (the ELBO or the IWAE bound), takes beta * beta(t)."""

    def bound(self, sample, objective, beta, step):
        beta = beta * self(step)
        return objective(sample, beta), {"beta": beta}


class _Term(Schedule):
    """A schedule that replaces beta * KL in the ELBO by beta * a term of the batch's KL; the ELBO only."""

    def bound(self, sample, objective, beta, step):
        reconstruction = tf.reduce_mean(sample.log_likelihood, axis=0)
        applied = self.term(sample, step)
        applied["kl_term"] = beta * applied["kl_term"]
        # The term is one number for the batch: each example's bound carries it, so the batch mean
        # of the bound is mean reconstruction - beta * term.
        return reconstruction - applied["kl_term"], applied

    def term(self, sample, step):
        """{"kl_term": the KL term at `step` for the batch, a scalar, and any other value it applied}."""
        raise NotImplementedError

    def check(self, model):
        if model.objective != "elbo":
            raise ValueError(
                f"kl_schedule: {type(self).__name__} replaces the ELBO's KL term and needs objective='elbo'; "
                f"got objective={model.objective!r}. With 'iwae', use a schedule of beta (Linear, Cyclical)."
            )


@keras.saving.register_keras_serializable(package="tfvae")
class Linear(schedule_specs.Linear, _Weight):
    """beta(t) = max_beta * min(1, t / steps): a warm-up from 0 over the first `steps` steps.

    Args:
        steps: steps over which beta rises, >= 1.
        max_beta: beta from step `steps` on, > 0.

    Example:
        >>> tfvae.VAE(input_shape=(784,), kl_schedule=tfvae.schedules.Linear(steps=10000))
    """

    def __call__(self, step):
        return self.max_beta * _fraction(step, self.steps)


@keras.saving.register_keras_serializable(package="tfvae")
class Cyclical(schedule_specs.Cyclical, _Weight):
    """Cyclical annealing (Fu et al. 2019): beta rises linearly from 0 over the first `ratio` of each
    cycle of `period` steps, then stays at `max_beta` until the cycle ends.

    beta(t) = max_beta * min(1, tau / ratio), with tau = (t mod period) / period.

    Args:
        period: steps per cycle, >= 1 (the paper's T / M for T steps and M cycles).
        ratio: the part of each cycle over which beta rises, in (0, 1].
        max_beta: beta at the top of each cycle, > 0.

    Example:
        >>> tfvae.VAE(input_shape=(784,), kl_schedule=tfvae.schedules.Cyclical(period=2500))
    """

    def __call__(self, step):
        tau = tf.cast(_as_step(step) % self.period, tf.float32) / self.period
        return self.max_beta * tf.minimum(1.0, tau / self.ratio)


@keras.saving.register_keras_serializable(package="tfvae")
class FreeBits(schedule_specs.FreeBits, _Term):
    """Free bits (Kingma et al. 2016): the KL term is sum_d max(nats, KL_d), with KL_d the batch mean
    of latent dimension d's KL, so no dimension is pushed below `nats` onto the prior.

    Needs a posterior and a prior that factorize over the latent dimensions with an analytic KL per
    dimension (the "diagonal" posterior and the "normal" prior); the step does not change it. In a
    hierarchy (`latent_dim=(d_1, ..., d_L)`) the floor is on each layer's KL instead (Kingma et al.'s
    groups), sum_i max(nats, KL_i), whatever the layers' heads.

    Args:
        nats: the floor on each dimension's KL, in nats, > 0.

    Example:
        >>> tfvae.VAE(input_shape=(784,), kl_schedule=tfvae.schedules.FreeBits(nats=0.25))
    """

    def __call__(self, step):
        return tf.fill(tf.shape(_as_step(step)), tf.constant(self.nats, tf.float32))

    def term(self, sample, step):
        layers = objectives.layer_kl(sample)
        if layers:
            kl = distribute.global_mean(tf.stack(list(layers.values()), axis=-1))  # [L]
        else:
            kl = distribute.global_mean(_kl_per_dimension(sample.q, sample.p))  # [latent_dim]
        return {"kl_term": tf.reduce_sum(tf.maximum(self(step), kl))}

    def check(self, model):
        super().check(model)
        if len(model.latent_dims) > 1:  # the floor is per layer: any layers' heads have a KL by layer
            return
        c = None if model.condition_shape is None else tf.zeros((1, *model.condition_shape))
        q = model.posterior(tf.zeros((1, *model.event_shape)), c)
        if _kl_per_dimension(q, model.prior) is None:
            raise ValueError(
                f"kl_schedule: FreeBits needs a posterior and a prior that factorize over the latent dimensions "
                f"(Independent distributions with an analytic KL per dimension, e.g. posterior='diagonal' and "
                f"prior='normal'); got q(z|x) = {type(q).__name__} and p(z) = {type(model.prior).__name__}."
            )


@keras.saving.register_keras_serializable(package="tfvae")
class Capacity(schedule_specs.Capacity, _Term):
    """Controlled capacity (Burgess et al. 2018): the KL term is gamma * |KL - C(t)|, with KL the batch
    mean and C(t) = max_capacity * min(1, t / steps) rising from 0, so the KL is led to C(t).

    Args:
        max_capacity: C from step `steps` on, in nats, >= 0.
        steps: steps over which C rises, >= 1.
        gamma: the weight of |KL - C(t)|, > 0 (the paper's 1000).

    Example:
        >>> tfvae.VAE(input_shape=(784,), kl_schedule=tfvae.schedules.Capacity(max_capacity=25, steps=100000))
    """

    def __call__(self, step):
        return self.max_capacity * _fraction(step, self.steps)

    def term(self, sample, step):
        capacity = self(step)
        kl = distribute.global_mean(objectives.kl_divergence(sample))
        return {"kl_term": self.gamma * tf.abs(kl - capacity), "capacity": capacity}


# The schedules by the names of their specs ("cyclical:period=1000"), as the command line takes them.
SCHEDULES = {"linear": Linear, "cyclical": Cyclical, "free_bits": FreeBits, "capacity": Capacity}


def get(spec, model=None):
    """The schedule `spec` stands for, checked against `model` if given; None for None.

    Args:
        spec: None, a `Schedule`, its config dict (`keras.saving.serialize_keras_object`), or a
            string NAME or NAME:ARG=VALUE,... with NAME in `SCHEDULES`, e.g. "cyclical:period=1000,ratio=0.5".
        model: a built `tfvae.VAE` the schedule must be able to train (see `Schedule.check`).
    """
    if spec is None:
        return None
    if isinstance(spec, dict):
        spec = keras.saving.deserialize_keras_object(spec)
    elif isinstance(spec, str):
        spec = schedule_specs.parse(spec, SCHEDULES)
    if not isinstance(spec, Schedule):
        raise TypeError(
            f"kl_schedule: expected None, a tfvae.schedules schedule or a string such as 'cyclical:period=1000'; "
            f"got {type(spec).__name__}."
        )
    if model is not None:
        spec.check(model)
    return spec


def to_spec(schedule):
    """The string `get` reads back into `schedule`, with every argument: "cyclical:period=1000,ratio=0.5,max_beta=1.0"."""
    name = next((name for name, cls in SCHEDULES.items() if type(schedule) is cls), None)
    if name is None:
        raise ValueError(f"kl_schedule: only the schedules in SCHEDULES have a spec string; got {type(schedule).__name__}.")
    return f"{name}:" + ",".join(f"{key}={value!r}" for key, value in schedule.get_config().items())


def _kl_per_dimension(q, p):
    """KL(q_d || p_d) of each latent dimension d, [B, latent_dim]; None unless q and p are Independent
    over the last axis with an analytic KL between their components (e.g. Normal and Normal)."""
    factorized = all(
        isinstance(d, tfd.Independent) and tf.get_static_value(d.reinterpreted_batch_ndims) == 1 for d in (q, p)
    )
    if not factorized:
        return None
    try:
        return tfd.kl_divergence(q.distribution, p.distribution)
    except NotImplementedError:
        return None


def _as_step(step):
    return tf.cast(tf.convert_to_tensor(step), tf.int64)


def _fraction(step, steps):
    """min(1, t / steps), exact for integer t: the step is capped before it becomes a float."""
    return tf.cast(tf.minimum(_as_step(step), steps), tf.float32) / steps
