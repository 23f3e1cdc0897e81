"""Semi-amortized inference: refine the encoder's q(z|x) for each x by gradient ascent on its ELBO.

The encoder predicts q(z|x) in one pass, but one network shared by all x rarely finds each x's best
posterior: the ELBO it leaves on the table is the amortization gap (Cremer et al. 2018). `refine`
starts from the encoder's raw posterior parameters and takes Adam steps on each example's own ELBO

    ELBO(x; params) = E_q[log p(x|z)] - KL(q(z|x; params) || p(z)),   z = reparameterize(q, eps)

with the model's weights fixed. Examples never share parameters, so the gradient of the batch's
summed ELBO with respect to one example's parameters is that example's own gradient.

Example:
    >>> q = tfvae.inference.refine(model, x, steps=100)     # what model.infer(x) returns
    >>> tfvae.inference.elbo(model, x, q, num_samples=100)  # >= model.elbo(x, 100) on average
"""

import math

import tensorflow as tf

from tfvae import arguments, checks, noise, objectives, resources

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
        eps = noise.standard_normal(noise_shape, tf.random.experimental.stateless_fold_in(seed, t))
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

