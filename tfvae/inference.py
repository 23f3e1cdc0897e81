"""Semi-amortized inference: refine the encoder's q(z|x) for each x by gradient ascent on its ELBO.

The encoder predicts q(z|x) in one pass, but one network shared by all x rarely finds each x's best
posterior: the ELBO it leaves on the table is the amortization gap (Cremer et al. 2018). `refine`
starts from the encoder's raw posterior parameters and takes Adam steps on each example's own ELBO

    ELBO(x; params) = E_q[log p(x|z)] - KL(q(z|x; params) || p(z)),   z = reparameterize(q, eps)

with the model's weights fixed. Examples never share parameters, so the gradient of the batch's
summed ELBO with respect to one example's parameters is that example's own gradient.

Refinement climbs the mode nearest its start. Where p(z|x) has several modes, `refined_mixture`
refines from several starts and mixes the results: the proposal behind `proposal="refined"`.

Example:
    >>> q = tfvae.inference.refine(model, x, steps=100)     # what model.infer(x) returns
    >>> tfvae.inference.elbo(model, x, q, num_samples=100)  # >= model.elbo(x, 100) on average
"""

import math

import numpy as np
import tensorflow as tf
from tensorflow_probability import distributions as tfd

from tfvae import arguments, checks, heads, noise, objectives, resources

_fold_in = tf.random.experimental.stateless_fold_in

# Adam's moment decay rates and its denominator's floor (Kingma & Ba 2015 defaults).
_BETA_1, _BETA_2, _EPSILON = 0.9, 0.999, 1e-8


def refine(model, x, steps=100, learning_rate=1e-2, num_samples=1, seed=None, condition=None):
    """Returns q(z|x) after `steps` Adam steps on each example's ELBO over its posterior parameters.

    Args:
        model: a `tfvae.VAE`.
        x: a batch of shape (batch, *model.event_shape).
        steps: gradient steps, >= 0; 0 returns the encoder's q(z|x).
        learning_rate: Adam's step size on the raw posterior parameters (loc, and scales before
            their softplus), > 0.
        num_samples: K, the reparameterized samples of z per example in each step's ELBO estimate.
        seed: an int for reproducible noise; None takes the model's next seed.
        condition: the conditions of x for a conditional model (then q(z|x, c) is refined on the
            ELBO of log p(x|c)), else None.

    Returns:
        A TFP distribution like `model.encode(x)` returns: batch shape [B], event [latent_dim].
    """
    steps = arguments.non_negative_int(steps, "steps")
    learning_rate = arguments.finite_float(learning_rate, "learning_rate")
    num_samples = arguments.positive_int(num_samples, "num_samples")
    seed = checks.seed(seed)
    # All steps run in one graph without progress: their work is one step of the resource rule.
    event_size = math.prod(model.event_shape)
    resources.check_step(num_samples * event_size, "num_samples")
    resources.check_step(max(steps, 1) * num_samples * event_size, "steps")
    x = model.as_input(x)
    condition = model.as_condition(condition, x.shape[0])
    params = model.posterior_parameters(x, condition)
    if steps > 0:
        params = _ascend(
            model,
            x,
            params,
            tf.constant(steps),
            tf.constant(learning_rate, params.dtype),
            num_samples,
            noise.stateless_seed(seed, model.seed_generator),
            condition,
        )
    return model.posterior_head.distribution(tf.stop_gradient(params))


# The share of `refined_mixture`'s weight spread evenly over its starts, whatever their ELBOs (a defensive
# mixture, Hesterberg 1995): a start whose bound underrates the mass of its mode still gets draws.
DEFENSIVE_SHARE = 0.2


def refined_mixture(model, x, starts=8, steps=100, learning_rate=1e-2, num_samples=1, seed=None, condition=None,
                    elbo_samples=100):
    """A proposal over z for each x that covers several modes of p(z|x): q's refined from `starts` starts, mixed.

    Start 1 is the encoder's q(z|x), as in `refine`. The others are the encoder's posteriors of images
    the model draws, x_s = the likelihood's point estimate of p(x|z_s) for z_s ~ p(z), so they spread
    over the latent space as the prior does, and reach modes the encoder's q does not (on a Poisson
    digits model, refinement from the encoder's q alone climbed a minor mode and left log p(x) 18
    nats low; docs/density.md). Each start takes `steps` Adam steps on x's own ELBO, and the mixture
    weighs the refined q_s by exp(ELBO_s), the share of p(x) each one's bound accounts for, with
    DEFENSIVE_SHARE of the weight spread evenly over the starts.

    Args:
        model: a `tfvae.VAE`.
        x: a batch of shape (batch, *model.event_shape).
        starts: S, the refinements per example, >= 1; 1 is `refine` alone.
        steps, learning_rate, num_samples: each refinement's, as in `refine`.
        seed: an int for reproducible starts and noise; None takes the model's next seed.
        condition: the conditions of x for a conditional model, else None.
        elbo_samples: samples of z in the ELBO that weighs each refined q_s, >= 1.

    Returns:
        A `tfd.Mixture` with batch shape [B] and event shape [latent_dim]; its components are the
        posterior head's distributions.
    """
    starts = arguments.positive_int(starts, "starts")
    steps = arguments.non_negative_int(steps, "steps")
    learning_rate = arguments.finite_float(learning_rate, "learning_rate")
    num_samples = arguments.positive_int(num_samples, "num_samples")
    elbo_samples = arguments.positive_int(elbo_samples, "elbo_samples")
    seed = checks.seed(seed)
    event_size = math.prod(model.event_shape)
    resources.check_step(starts * max(num_samples, elbo_samples) * event_size, "starts")
    resources.check_step(starts * max(steps, 1) * num_samples * event_size, "steps")
    x = model.as_input(x)
    batch = int(x.shape[0])
    condition = model.as_condition(condition, batch)
    seed = noise.stateless_seed(seed, model.seed_generator)
    tiled_condition = None if condition is None else tf.concat([condition] * starts, 0)
    params = model.posterior_parameters(x, condition)
    if starts > 1:
        z = model.prior.sample([starts - 1, batch], seed=tf.cast(_fold_in(seed, 1), tf.int32))
        drawn = heads.point_estimate(model.likelihood_head, model.likelihood(z, condition))
        drawn = tf.reshape(tf.cast(drawn, x.dtype), (-1, *x.shape[1:]))
        others = model.posterior_parameters(drawn, None if condition is None else tiled_condition[batch:])
        params = tf.concat([params, others], 0)  # start s of example b in row s * B + b
    tiled_x = tf.concat([x] * starts, 0)
    if steps > 0:  # with the seed `refine` takes, so that one start is `refine` exactly
        params = _ascend(model, tiled_x, params, tf.constant(steps), tf.constant(learning_rate, params.dtype),
                         num_samples, seed, tiled_condition)
    params = tf.stop_gradient(params)
    eps = noise.standard_normal((elbo_samples, starts * batch, model.latent_dim), _fold_in(seed, 2))
    bounds = _elbo(model, tiled_x, model.posterior_head.distribution(params), eps, tiled_condition)
    bounds = np.reshape(bounds.numpy().astype(np.float64), (starts, batch)).T  # [B, S]
    checks.finite_estimate(bounds, "refined_mixture's ELBO", x=x, condition=condition)
    shares = np.exp(bounds - bounds.max(axis=1, keepdims=True))
    weights = (1.0 - DEFENSIVE_SHARE) * shares / shares.sum(axis=1, keepdims=True) + DEFENSIVE_SHARE / starts
    components = [model.posterior_head.distribution(params[s * batch : (s + 1) * batch]) for s in range(starts)]
    return tfd.Mixture(tfd.Categorical(probs=tf.constant(weights, tf.float32)), components)


def elbo(model, x, q, num_samples=1, seed=None, condition=None):
    """The ELBO of each x under a given posterior q (e.g. from `refine`), in nats: [B].

    The same estimator as `model.elbo`: K reparameterized samples for the reconstruction term,
    the KL analytic where TFP registers it.

    Args:
        model: a `tfvae.VAE`.
        x: a batch of shape (batch, *model.event_shape).
        q: a posterior with batch shape [B] and event shape [latent_dim].
        num_samples: K, samples of z per example.
        seed: an int for reproducible noise; None takes the model's next seed.
        condition: the conditions of x for a conditional model, else None.
    """
    num_samples = arguments.positive_int(num_samples, "num_samples")
    seed = checks.seed(seed)
    x = model.as_input(x)
    condition = model.as_condition(condition, x.shape[0])
    if tuple(q.batch_shape) != (x.shape[0],) or tuple(q.event_shape) != (model.latent_dim,):
        raise ValueError(
            f"q: expected batch shape [{x.shape[0]}] and event shape [{model.latent_dim}] to match x and the "
            f"model; got batch shape {q.batch_shape} and event shape {q.event_shape}."
        )
    eps = noise.standard_normal((num_samples, x.shape[0], model.latent_dim), noise.stateless_seed(seed, model.seed_generator))
    return _elbo(model, x, q, eps, condition)


def _elbo(model, x, q, eps, condition=None):
    bound, _, _ = objectives.elbo(objectives.posterior_sample(model, x, q, eps, condition))
    return bound


@tf.function(reduce_retracing=True)
def _ascend(model, x, params, steps, learning_rate, num_samples, seed, condition=None):
    """Adam ascent on the summed per-example ELBO, one fresh draw of eps per step, as one graph."""
    noise_shape = (num_samples, tf.shape(x)[0], model.latent_dim)

    def step(t, params, m, v):
        eps = noise.standard_normal(noise_shape, _fold_in(seed, t))
        with tf.GradientTape() as tape:
            tape.watch(params)
            objective = tf.reduce_sum(_elbo(model, x, model.posterior_head.distribution(params), eps, condition))
        gradient = tape.gradient(objective, params)
        m = _BETA_1 * m + (1.0 - _BETA_1) * gradient
        v = _BETA_2 * v + (1.0 - _BETA_2) * tf.square(gradient)
        count = tf.cast(t + 1, params.dtype)
        m_hat = m / (1.0 - _BETA_1**count)
        v_hat = v / (1.0 - _BETA_2**count)
        return t + 1, params + learning_rate * m_hat / (tf.sqrt(v_hat) + _EPSILON), m, v

    zeros = tf.zeros_like(params)
    _, params, _, _ = tf.while_loop(lambda t, *_: t < steps, step, (tf.constant(0), params, zeros, zeros))
    return params

