"""The bounds on log p(x): the one implementation that training, evaluation, inference and export use.

    ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z))
    log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x),   z_k = reparameterize(q, eps_k)
    IWAE_K = logsumexp_k log w_k - log K

Every estimator starts from a `PosteriorSample`: K samples of z from q(z|x) made from noise eps
[K, B, latent_dim], with log p(x|z) [K, B]. Only where eps comes from differs between callers
(the model's seed generator in training, a stateless seed in `infer`, TensorFlow's unseeded normal
in an exported graph). All values are in nats, one per example: shape [B].

A conditional model's bounds are those of log p(x|c): the condition c [B, ...] goes wherever x
does, to q(z|x, c) and p(x|z, c); p(z) stays unconditional.
"""

import math
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
from tensorflow_probability import distributions as tfd

from tfvae import heads, noise


class PosteriorSample(NamedTuple):
    """K samples z = reparameterize(q, eps) of the posterior, with what the bounds need of them."""

    q: Any  # q(z|x), batch [B]
    p: Any  # p(z)
    z: tf.Tensor  # [K, B, latent_dim]
    eps: tf.Tensor  # [K, B, latent_dim], the noise z was made from
    log_likelihood: tf.Tensor  # log p(x|z_k), [K, B]
    log_q: tf.Tensor  # log q(z_k|x), [K, B]


def posterior_sample(model, x, q, eps, condition=None):
    """Samples z ~ q from the noise eps and scores them: the start of every estimator.

    Args:
        model: a `tfvae.VAE` (its posterior head, prior and `log_likelihood` are used).
        x: a float32 batch [B, *event_shape].
        q: the posterior q(z|x), batch shape [B]: `model.posterior(x)`, or a refined one.
        eps: standard normal noise [K, B, latent_dim].
        condition: the conditions of x [B, *condition_shape] for a conditional model, else None.
    """
    head = model.posterior_head
    z = heads.reparameterize(head, q, eps)
    log_q = heads.posterior_log_prob(head, q, z, eps)
    return PosteriorSample(q, model.prior, z, eps, model.log_likelihood(x, z, condition), log_q)


def kl_divergence(sample):
    """KL(q || p): analytic where TFP registers it, else the Monte Carlo mean of log q - log p over the K samples."""
    try:
        return tfd.kl_divergence(sample.q, sample.p)
    except NotImplementedError:
        return tf.reduce_mean(sample.log_q - sample.p.log_prob(sample.z), axis=0)


def layer_kl_names(latent_dims):
    """The names of a hierarchy's KL by layer, "kl_z1" ... "kl_zL" (bottom first); none for one layer."""
    return [f"kl_z{i}" for i in range(1, len(latent_dims) + 1)] if len(latent_dims) > 1 else []


def layer_kl(sample):
    """A hierarchy's KL by layer, {"kl_z1": [B], ..., "kl_zL": [B]}: the Monte Carlo mean over the K samples of
    log q(z_i|x, z_{i+1}) - log p(z_i|z_{i+1}), which sum to `kl_divergence`'s; {} for one layer."""
    if not (isinstance(sample.q, heads.Chain) and isinstance(sample.p, heads.Chain)):
        return {}
    log_q = sample.q.layer_log_probs(sample.z, sample.eps)
    log_p = sample.p.layer_log_probs(sample.z)
    return {name: tf.reduce_mean(q_i - p_i, axis=0)
            for name, q_i, p_i in zip(layer_kl_names(sample.q.latent_dims), log_q, log_p)}


def elbo(sample, beta=1.0):
    """The (beta-weighted) ELBO and its two terms, each [B].

    Returns:
        (bound, reconstruction, kl) with reconstruction = mean_k log p(x|z_k) and
        bound = reconstruction - beta * kl; beta = 1 gives the true lower bound.
    """
    reconstruction = tf.reduce_mean(sample.log_likelihood, axis=0)
    kl = kl_divergence(sample)
    return reconstruction - beta * kl, reconstruction, kl


def log_weights(sample, beta=1.0):
    """log w_k = log p(x|z_k) + beta * (log p(z_k) - log q(z_k|x)), shape [K, B]."""
    return sample.log_likelihood + beta * (sample.p.log_prob(sample.z) - sample.log_q)


def iwae(log_weights):
    """logsumexp_k log w_k - log K: the importance-weighted bound, tighter as K grows."""
    num_samples = tf.cast(tf.shape(log_weights)[0], log_weights.dtype)
    return tf.reduce_logsumexp(log_weights, axis=0) - tf.math.log(num_samples)


# The training objectives by name: (sample, beta) -> the bound to maximize, [B].
OBJECTIVES = {
    "elbo": lambda sample, beta: elbo(sample, beta)[0],
    "iwae": lambda sample, beta: iwae(log_weights(sample, beta)),
}


def get(name):
    """The training objective registered as `name`; a ValueError naming the choices otherwise."""
    if not isinstance(name, str) or name not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {sorted(OBJECTIVES)}; got {name!r}.")
    return OBJECTIVES[name]


def register(name, objective):
    """Makes `objective(sample, beta) -> bound [B]` a training objective, `tfvae.VAE(objective=name)`.

    The bound is maximized; `loss` is its negative batch mean. Register it before a saved model
    that uses it is loaded, as with Keras's own custom objects.
    """
    if not isinstance(name, str) or not callable(objective):
        raise TypeError(f"register: expected a name and a callable; got {name!r} and {type(objective).__name__}.")
    OBJECTIVES[name] = objective


# Importance samples per chunk are capped so one chunk's decoder output stays near this many floats.
_CHUNK_ELEMENTS = 2**23


def importance_sampled(model, x, num_samples, noise, condition=None, with_log_weights=False):
    """log p(x) by importance sampling with K = num_samples, and the ELBO's terms from the same z.

    The K samples are taken in chunks by a `tf.while_loop` whose running log-sum-exp keeps memory
    bounded for any K (5000 included): a chunk's decoder output holds about `_CHUNK_ELEMENTS` floats.

    Args:
        model: a `tfvae.VAE`.
        x: a float32 batch [B, *event_shape].
        num_samples: K >= 1, an int or a scalar int32 tensor.
        noise: `noise(k, batch_size) -> eps [k, B, latent_dim]`, standard normal.
        condition: the conditions of x for a conditional model (then log p(x|c)), else None.
        with_log_weights: also return the K log-weights (for their diagnostics; K x B floats).

    Returns:
        A dict of [B] tensors: "log_prob" (logsumexp_k log w_k - log K), "reconstruction"
        (mean_k log p(x|z_k)) and "kl" (the KL term the ELBO uses), for a hierarchy each layer's too
        ("kl_z1", ...: `layer_kl`); with `with_log_weights`, "log_weights" [K, B] as well.
    """
    batch_size = tf.shape(x)[0]
    num_samples = tf.convert_to_tensor(num_samples, tf.int32)
    event_size = tf.reduce_prod(tf.shape(x)[1:])
    chunk = tf.clip_by_value(_CHUNK_ELEMENTS // tf.maximum(batch_size * event_size, 1), 1, num_samples)
    q = model.posterior(x, condition)
    # A hierarchy's KL of each layer too, from the same samples (sums in the loop only for a hierarchy).
    layers = layer_kl_names(q.latent_dims) if isinstance(q, heads.Chain) else []

    def body(done, log_sum, log_likelihood_sum, kl_sum, layer_sums, *chunks):
        k = tf.minimum(chunk, num_samples - done)
        sample = posterior_sample(model, x, q, noise(k, batch_size), condition)
        log_w = log_weights(sample)
        log_sum = tf.reduce_logsumexp(tf.concat([log_sum[None], log_w], axis=0), axis=0)
        weight = tf.cast(k, tf.float32)
        kl = kl_divergence(sample) * weight
        layer_sums = [total + layer * weight for total, layer in zip(layer_sums, layer_kl(sample).values())]
        chunks = tuple(c.write(c.size(), log_w) for c in chunks)
        return (done + k, log_sum, log_likelihood_sum + tf.reduce_sum(sample.log_likelihood, axis=0), kl_sum + kl,
                layer_sums, *chunks)

    zeros = tf.zeros([batch_size])
    start = (tf.constant(0), zeros - float("inf"), zeros, zeros, [zeros] * len(layers))
    # The [B] sums keep an unknown batch size: a batch of one would otherwise enter as (1,) and leave as (None,).
    invariants = (tf.TensorShape([]),) + (tf.TensorShape([None]),) * 3 + ([tf.TensorShape([None])] * len(layers),)
    if with_log_weights:  # a loop variable only when asked for: exported graphs keep no TensorArray
        start += (tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False),)
        invariants += (tf.TensorShape(None),)
    _, log_sum, log_likelihood_sum, kl_sum, layer_sums, *chunks = tf.while_loop(
        lambda done, *_: done < num_samples, body, start, shape_invariants=invariants
    )
    count = tf.cast(num_samples, tf.float32)
    terms = {"log_prob": log_sum - tf.math.log(count), "reconstruction": log_likelihood_sum / count, "kl": kl_sum / count,
             **{name: total / count for name, total in zip(layers, layer_sums)}}
    if with_log_weights:
        terms["log_weights"] = chunks[0].concat()
    return terms


def check_precision(precision, proposal, method="importance"):
    """Refuses a reduced precision with any estimator but the encoder proposal's compiled one, the only one
    that runs the decoder in it (it would be ignored silently)."""
    if precision == "float32" or (method == "importance" and isinstance(proposal, str) and proposal == "encoder"):
        return
    other = (f"method={method!r}" if method != "importance" else
             f"proposal={proposal if isinstance(proposal, str) else type(proposal).__name__!r}")
    raise ValueError(f"precision: {precision!r} runs the encoder proposal's compiled estimator only; with {other} "
                     f"use precision='float32'.")


def proposal_log_weights(model, x, q, num_samples, condition=None, seed=None, from_head=True):
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k) for z_k ~ q, [K, B] float64 numpy, in chunks.

    z comes from the posterior head's hooks when q is the head's own (`from_head`: the encoder's or a
    refined one), else from q's own sampling. `seed` (an int) makes the draw reproducible; None takes
    the model's next seed.
    """
    seed = noise.stateless_seed(seed, model.seed_generator)
    batch, event = int(x.shape[0]), math.prod(model.event_shape)
    chunk = max(1, min(num_samples, _CHUNK_ELEMENTS // max(batch * event, 1)))
    prior, chunks = model.prior, []
    for index, start in enumerate(range(0, num_samples, chunk)):
        k = min(chunk, num_samples - start)
        chunk_seed = tf.stack([tf.cast(seed[0], tf.int64), tf.cast(seed[1], tf.int64) + index])
        if from_head:
            eps = noise.standard_normal((k, batch, model.latent_dim), chunk_seed)
            sample = posterior_sample(model, x, q, eps, condition)
            log_w = log_weights(sample)
        else:
            z = q.sample(k, seed=tf.cast(chunk_seed, tf.int32))
            log_w = model.log_likelihood(x, z, condition) + prior.log_prob(z) - q.log_prob(z)
        chunks.append(log_w.numpy().astype(np.float64))
    return np.concatenate(chunks)


def log_mean_exp(log_w):
    """log mean_k exp(log w_k) of numpy log-weights [K, B], without overflow: [B]."""
    top = log_w.max(axis=0)
    return top + np.log(np.exp(log_w - top).mean(axis=0))
