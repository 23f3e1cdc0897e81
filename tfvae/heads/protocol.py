"""The head protocol's optional hooks with their defaults, and heads looked up by name (see `tfvae.heads`)."""

import inspect

import keras
import tensorflow as tf

# The protocol's optional hooks, each with its default (see `tfvae.heads`' docstring).


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
