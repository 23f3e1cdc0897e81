"""Per-example estimates of log p(x) that say how far to trust them, and bounds on data the model draws.

`log_prob_estimate` answers "how likely is x?" with the estimate's standard error, ESS, PSIS k-hat and a
reliability flag, by importance sampling (from the encoder's q(z|x), a refined q, or any proposal) or
by annealed importance sampling; `bdmc` brackets log p(x) from both sides on simulated data. Both are
also `tfvae.evaluate.log_prob_estimate` and `tfvae.evaluate.bdmc`.
"""

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfvae import annealing, arguments, checks, noise, objectives, proposals, resources


class LogProbEstimate(NamedTuple):
    """Per-example estimates of log p(x) with their reliability, each a float64 numpy array [B].

    log_prob: logsumexp_k log w_k - log K, the importance-weighted estimate (in nats).
    stderr: its Monte Carlo standard error by the delta method, sqrt(Var(w) / K) / mean(w); NaN for
        K = 1, where no variance can be measured.
    ess: the effective sample size of the normalized weights, (sum w)^2 / sum w^2, in [1, K].
    pareto_k: PSIS k-hat of the K log-weights (Vehtari et al.; arviz-stats computes it, the
        `diagnostics` extra); above 0.7 the weights' tail is too heavy for the standard error to be
        trusted. NaN without arviz-stats, for K < 5, and for weights all equal (no tail).
    unreliable: bool, the estimate may be far off: k-hat above 0.7 with a standard error above
        0.05 nats, or an ESS below 1% of K (a handful of draws carry it). See `unreliable`.
    """

    log_prob: np.ndarray
    stderr: np.ndarray
    ess: np.ndarray
    pareto_k: np.ndarray
    unreliable: np.ndarray


# The reliability flag's thresholds, measured (docs/density.md, "How far to trust an estimate"): k-hat alone
# marks 12-98% of examples on models whose estimates are within 0.1 nats; with the standard error and the
# ESS it marks none of those, and every example the encoder proposal leaves more than 1 nat off.
PARETO_K_UNRELIABLE = 0.7
STDERR_UNRELIABLE = 0.05
ESS_SHARE_UNRELIABLE = 0.01


def unreliable(pareto_k, stderr, ess, num_samples):
    """The reliability flag of per-example estimates: (k-hat > 0.7 and stderr > 0.05 nats) or ESS < 1% of K.

    k-hat above 0.7 alone says the weights are heavy-tailed, which they are on most well-estimated
    examples; what makes an estimate doubtful is a heavy tail whose error bar is already not small, or
    so few effective draws that the tail was never seen. NaN diagnostics (K = 1) do not flag.
    """
    with np.errstate(invalid="ignore"):
        heavy = (pareto_k > PARETO_K_UNRELIABLE) & (stderr > STDERR_UNRELIABLE)
        return heavy | (ess < ESS_SHARE_UNRELIABLE * num_samples)


METHODS = ("importance", "ais")


def log_prob_estimate(model, x, num_samples=1000, proposal="encoder", condition=None, seed=None,
                      method="importance", ais_steps=100):
    """log p(x) for each example by importance sampling, with its standard error, ESS and PSIS k-hat.

    log w_k = log p(x|z_k) + log p(z_k) - log r(z_k) for z_k ~ r, the proposal: the encoder's
    q(z|x), q refined per example from several starts and mixed (`tfvae.inference.refined_mixture`,
    often a far better proposal where the encoder fits badly or p(z|x) has several modes), or any TFP
    distribution over z with batch shape [B].

    `method="ais"` is annealed importance sampling instead (Neal 2001; Wu et al. 2017 evaluated VAEs
    with it): `num_samples` chains start at z ~ p(z) and move through `ais_steps` intermediate densities
    p(z) p(x|z)^beta, beta from 0 to 1, by one HMC transition each, its step size adapted per example
    (`tfvae.annealing`); the chains' weights are the w_k above, unbiased for p(x) however well they mix.

    Args:
        model: a `tfvae.VAE`.
        x: a batch of shape (B, *model.event_shape).
        num_samples: K, importance samples (or AIS chains) per example, >= 1.
        proposal: "encoder", "refined" (`inference.refined_mixture` with its defaults), or a TFP distribution
            with batch shape [B] and event shape [latent_dim] (e.g. what `model.infer` returns). AIS
            starts from the prior and takes "encoder" only.
        condition: the conditions of x, for a conditional model.
        seed: an int for a reproducible estimate; None takes the model's next seed.
        method: "importance" or "ais".
        ais_steps: AIS's intermediate densities, >= 1.

    Returns:
        A `LogProbEstimate` of [B] arrays.

    Example:
        >>> estimate = tfvae.evaluate.log_prob_estimate(model, x_test[:100], 2000, proposal="refined")
        >>> estimate.log_prob, estimate.pareto_k > 0.7
    """
    num_samples = arguments.positive_int(num_samples, "num_samples")
    seed = checks.seed(seed)
    ais_steps = _check_estimator(proposal, method, ais_steps)
    x = model.as_input(x)
    condition = model.as_condition(condition, x.shape[0])
    resources.check_step(num_samples * math.prod(model.event_shape), "num_samples")  # one example's K at once
    if method == "ais":
        resources.check_step(ais_steps * num_samples * x.shape[0] * math.prod(model.event_shape), "ais_steps")
        seed = noise.stateless_seed(seed, model.seed_generator)
        start = model.prior.sample([num_samples, int(x.shape[0])], seed=tf.cast(seed, tf.int32))
        log_w = annealing.run(model, x, start, ais_steps, condition, seed + 1)
    else:
        log_w = proposals.log_weights(model, x, proposal, num_samples, condition, seed)
    estimate = _diagnosed(log_w)
    checks.finite_estimate(estimate.log_prob, "log_prob_estimate", x=x, condition=condition)
    return estimate


def _diagnosed(log_w):
    """The `LogProbEstimate` of log-weights [K, B]."""
    num_samples = log_w.shape[0]
    w = np.exp(log_w - log_w.max(axis=0))  # in (0, 1], the largest 1
    mean = w.mean(axis=0)
    log_prob = objectives.log_mean_exp(log_w)
    stderr = np.sqrt(w.var(axis=0, ddof=1) / num_samples) / mean if num_samples > 1 else np.full_like(mean, np.nan)
    ess = np.square(w.sum(axis=0)) / np.square(w).sum(axis=0)
    pareto_k = _pareto_k(log_w)
    return LogProbEstimate(log_prob, stderr, ess, pareto_k, unreliable(pareto_k, stderr, ess, num_samples))


def _pareto_k(log_w):
    """PSIS k-hat of each column of log-weights [K, B], by arviz-stats; NaN without it, for K < 5, and where
    no tail can be fitted (weights all equal: no tail to be heavy)."""
    k_hat = np.full(log_w.shape[1], np.nan)
    try:
        from arviz_stats.base import array_stats
    except ImportError:
        return k_hat
    if log_w.shape[0] < 5:
        return k_hat
    for column in range(log_w.shape[1]):
        try:
            # psislw takes log-likelihoods, as in leave-one-out, whose importance ratios are 1 / p(y|theta):
            # it fits the right tail of minus its input, so our log-weights go in negated.
            k_hat[column] = float(array_stats.psislw(-log_w[:, column], r_eff=1.0, axis=-1)[1])
        except ValueError:  # "All tail values are the same"
            pass
    return k_hat


class BDMCBounds(NamedTuple):
    """Bidirectional Monte Carlo on data drawn from the model, per example (float64 numpy arrays [N]).

    x: the examples, drawn as z ~ p(z), x ~ p(x|z) (float32, (N, *event_shape)).
    lower: forward AIS's estimate, a stochastic lower bound on log p(x) (E[lower] <= log p(x)).
    upper: reverse AIS's, from the z that drew x, a stochastic upper bound (E[upper] >= log p(x)).
    The gap, upper - lower, bounds how far AIS with these settings can be from log p(x); it shrinks to
    0 as `ais_steps` grows.
    """

    x: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


def bdmc(model, num_examples, num_chains=16, ais_steps=1000, seed=None, condition=None):
    """Bounds log p(x) from both sides on data the model draws (Grosse, Ghahramani, Adams 2015).

    For simulated data the z that generated each x is an exact sample of p(z|x), so AIS can run in
    reverse, from the posterior to the prior, and its weights estimate 1 / p(x). Forward and reverse
    chains of the same length sandwich the true log p(x): the gap shows how tight `method="ais"`
    with that many steps is for this model (and, with the forward IS estimate beside it, how far
    importance sampling is).

    Args:
        model: a `tfvae.VAE`.
        num_examples: N, the examples to draw.
        num_chains: AIS chains per example in each direction, >= 1.
        ais_steps: intermediate densities per chain, >= 1.
        seed: an int for reproducible bounds; None takes the model's next seed.
        condition: for a conditional model, one condition for every example or one per example.

    Returns:
        A `BDMCBounds` (x, lower, upper).

    Example:
        >>> bounds = tfvae.evaluate.bdmc(model, 100, ais_steps=1000)
        >>> (bounds.upper - bounds.lower).mean()          # nats between the bounds
    """
    num_examples = arguments.positive_int(num_examples, "num_examples")
    num_chains = arguments.positive_int(num_chains, "num_chains")
    ais_steps = arguments.positive_int(ais_steps, "ais_steps")
    seed = checks.seed(seed)
    condition = model.as_sample_condition(condition, num_examples)
    resources.check_step(ais_steps * num_chains * num_examples * math.prod(model.event_shape), "ais_steps")
    seeds = tf.random.experimental.stateless_split(tf.cast(noise.stateless_seed(seed, model.seed_generator),
                                                           tf.int32), 4)
    z = model.prior.sample(num_examples, seed=seeds[0])
    x = tf.cast(model.likelihood(z, condition).sample(seed=seeds[1]), tf.float32)
    forward = annealing.run(model, x, model.prior.sample([num_chains, num_examples], seed=seeds[2]), ais_steps,
                            condition, seeds[3])
    reverse = annealing.run(model, x, tf.tile(z[tf.newaxis], [num_chains, 1, 1]), ais_steps, condition,
                            seeds[3] + 1, reverse=True)
    return BDMCBounds(x.numpy(), objectives.log_mean_exp(forward), -objectives.log_mean_exp(reverse))


def _nanmax(values):
    """The largest value that is not NaN; NaN when none is (k-hat without arviz-stats)."""
    finite = values[~np.isnan(values)]
    return float(finite.max()) if finite.size else float("nan")


def _check_estimator(proposal, method, ais_steps, precision="float32"):
    """Refuses a bad method, ais_steps, proposal or precision before any work; a proposal distribution's
    shapes are checked against each batch by `proposals.distribution`."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}; got {method!r}.")
    ais_steps = arguments.positive_int(ais_steps, "ais_steps")
    if method == "ais" and not proposals.is_encoder(proposal):
        raise ValueError(f"proposal: AIS starts from the prior p(z) and takes no proposal; got {proposal!r}.")
    proposals.check(proposal)
    objectives.check_precision(precision, proposal, method)
    return ais_steps
