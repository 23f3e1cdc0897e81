"""Importance sampling's proposals over z, by name or as a distribution, and the log-weights they give.

    log w_k = log p(x|z_k) + log p(z_k) - log r(z_k),   z_k ~ r

"encoder" is the encoder's q(z|x); "refined" is `inference.refined_mixture`, q refined per example
from several starts and mixed (a far better proposal where the encoder fits badly or p(z|x) has
several modes); or any TFP distribution over z with batch shape [B].
"""

from tensorflow_probability import distributions as tfd

from tfvae import inference, objectives

# The proposals taken by name.
PROPOSALS = ("encoder", "refined")


def check(proposal):
    """Refuses a proposal that is neither one of the PROPOSALS by name nor a TFP distribution; a
    distribution's shapes are checked against each batch by `distribution`."""
    if isinstance(proposal, str):
        if proposal not in PROPOSALS:
            raise ValueError(f"proposal: expected one of {', '.join(PROPOSALS)} or a TFP distribution over z; "
                             f"got {proposal!r}.")
    elif not isinstance(proposal, tfd.Distribution):
        raise TypeError(f"proposal: expected one of {', '.join(PROPOSALS)} or a TFP distribution over z; "
                        f"got {type(proposal).__name__}.")


def is_encoder(proposal):
    """Whether `proposal` names the encoder's q(z|x), whose draws come from the posterior head's hooks."""
    return isinstance(proposal, str) and proposal == "encoder"


def distribution(model, x, proposal, condition=None, seed=None):
    """The proposal over z for the float32 batch x, checked: batch shape [B], event [latent_dim].

    Args:
        proposal: "encoder" (q(z|x)), "refined" (`inference.refined_mixture` with its defaults, seeded
            by `seed`), or a TFP distribution with batch shape [B] and event shape [latent_dim].
    """
    check(proposal)
    if isinstance(proposal, str):
        if proposal == "refined":
            return inference.refined_mixture(model, x, seed=seed, condition=condition)
        return model.posterior(x, condition)
    shapes = (tuple(proposal.batch_shape), tuple(proposal.event_shape))
    if shapes != ((x.shape[0],), (model.latent_dim,)):
        raise ValueError(f"proposal: expected a distribution with batch shape ({x.shape[0]},), one per example, and "
                         f"event shape ({model.latent_dim},), the latent_dim; got batch shape {shapes[0]} and event "
                         f"shape {shapes[1]}.")
    return proposal


def log_weights(model, x, proposal, num_samples, condition=None, seed=None):
    """The K log-weights of each example of the float32 batch x under `proposal`: [K, B] float64 numpy."""
    q = distribution(model, x, proposal, condition, seed)
    return objectives.proposal_log_weights(model, x, q, num_samples, condition, seed, is_encoder(proposal))
