"""The bounds on log p(x) that tfvae trains and evaluates, in nats per example.

    ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z))
    IWAE_K = E[logsumexp_k (log p(x|z_k) + log p(z_k) - log q(z_k|x)) - log K]

All functions take K samples z of shape [K, B, latent_dim] and return shape [B].
"""

import math

import tensorflow as tf
from tensorflow_probability import distributions as tfd


def kl_divergence(q, p, z):
    """KL(q || p): analytic where TFP registers it, else the Monte Carlo mean over the samples z."""
    try:
        return tfd.kl_divergence(q, p)
    except NotImplementedError:
        return tf.reduce_mean(q.log_prob(z) - p.log_prob(z), axis=0)


def elbo(log_likelihood, q, p, z, beta=1.0):
    """The (beta-weighted) ELBO and its two terms.

    Args:
        log_likelihood: log p(x|z_k), shape [K, B].
        q: the posterior q(z|x), batch shape [B].
        p: the prior p(z).
        z: samples from q, shape [K, B, latent_dim].
        beta: weight of the KL term; 1 gives the true lower bound.

    Returns:
        (bound, reconstruction, kl), each [B]; bound = reconstruction - beta * kl.
    """
    reconstruction = tf.reduce_mean(log_likelihood, axis=0)
    kl = kl_divergence(q, p, z)
    return reconstruction - beta * kl, reconstruction, kl


def log_importance_weights(log_likelihood, q, p, z, beta=1.0):
    """log w_k = log p(x|z_k) + beta * (log p(z_k) - log q(z_k|x)), shape [K, B]."""
    return log_likelihood + beta * (p.log_prob(z) - q.log_prob(z))


def iwae(log_weights):
    """logsumexp_k log w_k - log K: the importance-weighted bound, tighter as K grows."""
    num_samples = tf.cast(tf.shape(log_weights)[0], log_weights.dtype)
    return tf.reduce_logsumexp(log_weights, axis=0) - tf.math.log(num_samples)


# Importance samples per chunk are capped so one chunk's decoder output stays near this many floats.
_CHUNK_ELEMENTS = 2**23


def samples_per_chunk(num_samples, batch_size, event_size):
    """How many of K samples to take at once for a batch, so memory stays bounded for any K."""
    return max(1, min(num_samples, _CHUNK_ELEMENTS // (batch_size * event_size)))


def log_mean_exp_update(running, count, log_weights):
    """Folds a chunk of log weights [k, B] into a running log-mean-exp over `count` earlier ones.

    This keeps memory bounded for any K: log p(x) from K = 5000 samples is a few chunks.
    """
    chunk = int(log_weights.shape[0])
    chunk_mean = iwae(log_weights)
    if running is None:
        return chunk_mean, chunk
    total = count + chunk
    combined = tf.reduce_logsumexp(
        tf.stack([running + math.log(count / total), chunk_mean + math.log(chunk / total)]), axis=0
    )
    return combined, total
