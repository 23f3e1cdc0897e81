"""Heads: the layers that turn network outputs into the model's three TFP distributions.

tfvae's own heads live in `likelihoods`, `posteriors` and `priors` (their shared numerics in `ops`),
and are named here too (`tfvae.heads.Bernoulli`, `tfvae.heads.LIKELIHOODS`).

The head protocol. A head is any `keras.layers.Layer` with these methods; tfvae's own heads
follow it, and a user's head is accepted the same way, registered with tfvae or not:

- posterior q(z|x): `call(features) -> params` and `distribution(params) -> tfd.Distribution` with
  batch shape [B] and event shape [latent_dim];
- likelihood p(x|z): `call(features) -> params` and `distribution(params) -> tfd.Distribution`
  with event shape the data's. The params may have any trailing shape (two parameters per pixel
  are [B, *event_shape, 2]); the model calls `distribution` on params of shape [K, B, ...] too,
  for K samples of z at once, so it must broadcast over leading dimensions like TFP does;
- prior p(z): `distribution()` or `distribution(model)` -> a tfd.Distribution with event shape
  [latent_dim]. A prior that takes the model may use it (a VampPrior encodes its pseudo-inputs
  with `model.posterior`).

Optional hooks, with the defaults the model uses when a head does not define them:

- posterior `reparameterize(q, eps)`: z from standard normal noise eps [K, B, latent_dim], a
  differentiable function of q's parameters. Default: `q.mean() + q.stddev() * eps`.
- posterior `log_prob(q, z, eps)`: log q(z|x) of the z that `reparameterize` made from eps.
  Default: `q.log_prob(z)`. A head can give a form that needs fewer ops (see FullCovarianceGaussian).
- posterior `stddev(q)`: the marginal standard deviations. Default: `q.stddev()`.
- likelihood `log_likelihood(p, x)`: log p(x|z) summed over the event, in a faster form than
  TFP's. Default: `p.log_prob(x)`. (Bernoulli's is its logits' sum, x * l - softplus(l).)
- likelihood `point_estimate(p)`: the x that `reconstruct`, `sample` and `decode` signatures
  return. Default: `p.mean()`.
- likelihood `in_support(x)`: a boolean tensor of x's shape, False where p(x|z) = 0 for every z
  (checked on every input), and `support`, a phrase for error messages. Default: every finite x.

Every distribution has batch shape [B] and one event per example, so `log_prob` gives one
number (in nats) per example; the model checks this when it is built (`tfvae.checks.head_distribution`).
A new head is one class; tfvae's own also get a registry name.
"""

import inspect

import keras
import tensorflow as tf

# The protocol's optional hooks, each with its default (see the module docstring).


def reparameterize(head, q, eps):
    """z = the posterior head's `reparameterize(q, eps)`, by default loc + scale * eps."""
    if hasattr(head, "reparameterize"):
        return head.reparameterize(q, eps)
    return q.mean() + q.stddev() * eps


def posterior_log_prob(head, q, z, eps):
    """log q(z|x) of z = reparameterize(q, eps), in the head's own form if it has one."""
    return head.log_prob(q, z, eps) if hasattr(head, "log_prob") else q.log_prob(z)


def posterior_stddev(head, q):
    """q's marginal standard deviations, in the head's own form if it has one."""
    return head.stddev(q) if hasattr(head, "stddev") else q.stddev()


def log_likelihood(head, p, x):
    """log p(x|z) summed over the event: the likelihood head's `log_likelihood(p, x)` if it has one,
    by default p.log_prob(x)."""
    return head.log_likelihood(p, x) if hasattr(head, "log_likelihood") else p.log_prob(x)


def point_estimate(head, p):
    """The x a likelihood head stands for: its `point_estimate(p)`, by default p's mean."""
    return head.point_estimate(p) if hasattr(head, "point_estimate") else p.mean()


def in_support(head, x):
    """Boolean tensor of x's shape: where the likelihood head gives x a non-zero density."""
    if hasattr(head, "in_support"):
        return head.in_support(x)
    return tf.ones_like(x, dtype=tf.bool)


def support(head):
    """The phrase that describes the likelihood head's support in error messages."""
    return getattr(head, "support", "values where its in_support(x) is true")


def prior_distribution(head, model):
    """p(z) from a prior head: `distribution(model)` if it takes the model, else `distribution()`."""
    if inspect.signature(head.distribution).parameters:
        return head.distribution(model)
    return head.distribution()


def get(registry, spec, argument, **kwargs):
    """Returns the head named `spec` in `registry` built with `kwargs`, or `spec` itself if it is a head.

    Args:
        registry: one of POSTERIORS, PRIORS, LIKELIHOODS.
        spec: a registered name, or any head: a `keras.layers.Layer` with a `distribution` method
            (see the module docstring), whether tfvae registered its class or not.
        argument: the user-facing argument name, for error messages.
        **kwargs: constructor arguments for a named head; those its constructor does not take are
            left out (a VampPrior needs event_shape, N(0, I) does not).
    """
    if isinstance(spec, str):
        if spec not in registry:
            raise ValueError(f"{argument}: expected one of {sorted(registry)}; got {spec!r}.")
        accepted = inspect.signature(registry[spec]).parameters
        return registry[spec](**{name: value for name, value in kwargs.items() if name in accepted})
    if isinstance(spec, keras.layers.Layer) and callable(getattr(spec, "distribution", None)):
        return spec
    raise TypeError(
        f"{argument}: expected one of {sorted(registry)} or a head (a keras.layers.Layer with a "
        f"distribution method); got {type(spec).__name__}."
    )


# The heads by name, and the public names of the family modules (imported last: they use the hooks' module).
from tfvae.heads.likelihoods import (  # noqa: E402, F401
    LIKELIHOODS, Bernoulli, ContinuousBernoulli, DiscretizedLogistic, Gaussian, Likelihood, NegativeBinomial, Poisson,
    fused_sums,
)
from tfvae.heads.ops import log_gamma, softplus  # noqa: E402, F401
from tfvae.heads.posteriors import POSTERIORS, DiagonalGaussian, FullCovarianceGaussian, diagonal_normal  # noqa: E402, F401
from tfvae.heads.priors import PRIORS, GaussianMixture, MixtureOfGaussians, StandardNormal, VampPrior  # noqa: E402, F401
