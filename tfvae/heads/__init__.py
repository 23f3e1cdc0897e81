"""Heads: the layers that turn network outputs into the model's three TFP distributions.

tfvae's own heads live in `likelihoods`, `posteriors` and `priors` (their shared numerics in `ops`),
`hierarchy` stacks posterior and prior heads into layers of z, and `protocol` holds the optional hooks
below with their defaults; all are named here too (`tfvae.heads.Bernoulli`, `tfvae.heads.LIKELIHOODS`).

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

from tfvae.heads.protocol import (  # noqa: F401 (the hooks and the lookup, public here)
    get, in_support, log_likelihood, point_estimate, posterior_log_prob, posterior_stddev, prior_distribution,
    reparameterize, support,
)

# The heads by name, and the public names of the family modules.
from tfvae.heads.likelihoods import (  # noqa: F401
    LIKELIHOODS, Bernoulli, ContinuousBernoulli, DiscretizedLogistic, Gaussian, Likelihood, NegativeBinomial, Poisson,
    fused_sums,
)
from tfvae.heads.ops import log_gamma, softplus  # noqa: F401
from tfvae.heads.posteriors import POSTERIORS, DiagonalGaussian, FullCovarianceGaussian, diagonal_normal  # noqa: F401
from tfvae.heads.priors import PRIORS, GaussianMixture, MixtureOfGaussians, StandardNormal, VampPrior  # noqa: F401
from tfvae.heads.hierarchy import Chain, HierarchicalPosterior, HierarchicalPrior  # noqa: F401
