"""Annealed importance sampling (AIS) of log p(x), forwards and in reverse, by HMC.

The intermediate densities are pi_b(z) ∝ p(z) p(x|z)^b for b on a sigmoidal schedule from 0 to 1
(Grosse, Ghahramani, Adams 2015): a chain starts at z ~ p(z) and at each step adds (b_t - b_{t-1}) log p(x|z)
to its log-weight, then takes one HMC transition that leaves pi_{b_t} invariant. E[w] = p(x), so
logmeanexp over chains is a stochastic lower bound on log p(x) (Neal 2001). Run in reverse, from an exact
posterior sample (the z that generated x) down to b = 0, E[w] = 1 / p(x): -logmeanexp is a stochastic upper
bound, and the two together are bidirectional Monte Carlo (BDMC).

Written here rather than taken from `tfp.mcmc.sample_annealed_importance_chain`, whose kernel results carry
the previous temperature's target log-density and gradient into each HMC step (tensorflow/probability
issue 1429): the Metropolis test then compares densities of two temperatures, the chain is not invariant
for either, and its step-size adaptation shrinks to nothing. Here every transition starts from the target
of its own temperature.

The step size is adapted per example (shared by that example's chains, as Wu et al. 2017 adapted theirs):
up by 2% when the chains' mean acceptance exceeds 0.65, down by 2% otherwise, every step.
"""

import numpy as np
import tensorflow as tf

# HMC within AIS: leapfrog steps per transition, the first step size, and its adaptation.
LEAPFROG_STEPS = 5
INITIAL_STEP_SIZE = 0.1
TARGET_ACCEPTANCE = 0.65
ADAPTATION_RATE = 0.02
# The sigmoid schedule's steepness: b_t = sigmoid(delta (2t/T - 1)), rescaled to [0, 1].
_SCHEDULE_DELTA = 4.0


def schedule(num_steps):
    """The inverse temperatures b_0 = 0 < b_1 < ... < b_T = 1, float32 [T + 1], sigmoidal."""
    s = 1.0 / (1.0 + np.exp(-_SCHEDULE_DELTA * np.linspace(-1.0, 1.0, num_steps + 1)))
    return ((s - s[0]) / (s[-1] - s[0])).astype(np.float32)


def run(model, x, start, num_steps, condition, seed, reverse=False):
    """The AIS log-weights [chains, B] (float64 numpy) of chains started at `start` [chains, B, latent_dim].

    Forwards (start ~ p(z)) E[exp(log w)] = p(x); in reverse (start ~ p(z|x), from b = 1 down to 0)
    E[exp(log w)] = 1 / p(x). `seed` is a stateless seed pair [2].
    """
    betas = schedule(num_steps)
    if reverse:
        betas = betas[::-1].copy()
    return _chains(model, x, condition, start, tf.constant(betas), tf.cast(seed, tf.int32)).numpy().astype(np.float64)


# One trace per model and shape (the model is a Python argument), whatever the number of steps.
@tf.function(autograph=False, reduce_retracing=True)
def _chains(model, x, condition, start, betas, seed):
    return _anneal(model.prior, lambda z: model.log_likelihood(x, z, condition), start, betas, seed)


def _anneal(prior, log_likelihood, start, betas, seed):
    batch = tf.shape(start)[1]
    step_size = tf.fill(tf.stack([batch, 1]), INITIAL_STEP_SIZE)

    def body(t, z, log_w, step_size):
        seeds = tf.random.experimental.stateless_split(tf.stack([seed[0], seed[1] + t]), 2)
        log_w += (betas[t] - betas[t - 1]) * log_likelihood(z)
        z, accepted = _hmc(prior, log_likelihood, betas[t], z, step_size, seeds)
        acceptance = tf.reduce_mean(accepted, axis=0)[:, tf.newaxis]  # over the chains: [B, 1]
        step_size = tf.where(acceptance > TARGET_ACCEPTANCE, step_size * (1.0 + ADAPTATION_RATE),
                             step_size / (1.0 + ADAPTATION_RATE))
        return t + 1, z, log_w, step_size

    log_w = tf.zeros(tf.shape(start)[:2])
    num_steps = tf.shape(betas)[0]
    _, _, log_w, _ = tf.while_loop(lambda t, *_: t < num_steps, body, (tf.constant(1), start, log_w, step_size))
    return log_w


def _hmc(prior, log_likelihood, beta, z, step_size, seeds):
    """One HMC transition invariant for p(z) p(x|z)^beta: (z', accepted [chains, B] float32)."""

    def potential(z):  # U(z) = -log pi_beta(z), and its gradient
        with tf.GradientTape() as tape:
            tape.watch(z)
            u = -(prior.log_prob(z) + beta * log_likelihood(z))
        return u, tape.gradient(u, z)

    step = step_size[tf.newaxis]  # [1, B, 1], over chains and latent units
    momentum = tf.random.stateless_normal(tf.shape(z), seeds[0])
    u, grad = potential(z)
    z_new, p = z, momentum - 0.5 * step * grad
    for leap in range(LEAPFROG_STEPS):
        z_new = z_new + step * p
        u_new, grad_new = potential(z_new)
        p = p - (step if leap < LEAPFROG_STEPS - 1 else 0.5 * step) * grad_new
    kinetic = 0.5 * tf.reduce_sum(tf.square(momentum), -1)
    kinetic_new = 0.5 * tf.reduce_sum(tf.square(p), -1)
    log_accept = u + kinetic - u_new - kinetic_new
    # A trajectory that left the support or overflowed (NaN or -inf) is rejected, never followed.
    log_accept = tf.where(tf.math.is_finite(log_accept), log_accept, -np.inf)
    log_uniform = tf.math.log(tf.random.stateless_uniform(tf.shape(log_accept), seeds[1]))
    accept = log_uniform < tf.minimum(log_accept, 0.0)
    return tf.where(accept[..., tf.newaxis], z_new, z), tf.cast(accept, tf.float32)
