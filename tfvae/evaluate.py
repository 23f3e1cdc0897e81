"""How good is a trained VAE? Test log-likelihood with its standard error, bits/dim, active units,
and the amortization gap.

    log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K,  z_k ~ q(z|x)

is the importance-weighted estimate (Burda et al. 2015) with K = 5000 samples by default; the
samples are drawn in chunks, so memory stays bounded for any K. The ELBO, its reconstruction and
KL terms come from the same samples at no extra cost.

Data is a numpy array (or anything `np.asarray` takes) of shape (N, *model.event_shape), or a
`tf.data.Dataset` of x or (x, labels), batched or not. A conditional model's conditions come as
`condition=` (an array, one row per example) or as a dataset's labels, (x, condition) pairs; the
estimates are then of log p(x|c).

Example:
    >>> evaluate.log_likelihood(model, x_test)          # {"log_likelihood": -86.8, ...} in nats
    >>> evaluate.active_units(model, x_test)            # 20
    >>> evaluate.amortization_gap(model, x_test[:1000])  # what model.infer gains over the encoder
"""

import math
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae import arguments, checks, inference, noise, objectives, resources
from tfvae import precision as tfvae_precision


def log_likelihood(model, data, num_samples=5000, batch_size=100, verbose=1, precision="float32", condition=None):
    """The mean test log-likelihood (importance-weighted, K = num_samples) and the ELBO, in nats.

    Args:
        model: a `tfvae.VAE`.
        data: array of shape (N, *model.event_shape), or a `tf.data.Dataset` of x or (x, labels).
        num_samples: K, importance samples per example; the estimate tightens as K grows.
        batch_size: examples per batch for arrays and unbatched datasets.
        verbose: 0 silent, 1 a progress bar (`keras.utils.Progbar`), 2 one line at the end
            (Keras's convention; printed when the number of examples is known, i.e. for arrays).
        precision: "float32", or "bfloat16" for the decoder's matrix products (about twice as fast on
            CPUs with avx512_bf16 or AMX; see `tfvae.precision`).
        condition: for a conditional model and array data, the conditions, (N, *condition_shape).

    Returns:
        A dict of floats: "log_likelihood" (mean log p(x)), "log_likelihood_stderr" (sample standard
        deviation of per-example log p(x) / sqrt(N); NaN for one example), "bits_per_dim"
        (-log_likelihood / (D ln 2), D = prod(event_shape)), "elbo", "reconstruction" (E_q log p(x|z)),
        "kl", "gap" (log_likelihood - elbo), and the ints "num_examples" and "num_samples".
    """
    num_samples = arguments.positive_int(num_samples, "num_samples")
    precision = tfvae_precision.check(precision)
    dimensions = math.prod(model.event_shape)
    batch_size = _bounded_batch(num_samples, dimensions, batch_size, f"num_samples={num_samples}")
    batches, num_examples = _batches(model, data, batch_size, condition)
    progress = keras.utils.Progbar(
        num_examples, verbose=verbose, stateful_metrics=["log_likelihood"], unit_name="example"
    )
    log_p, reconstruction, kl = [], [], []
    seen, total = 0, 0.0
    for x, c in batches:
        terms = model.importance_sampled(x, tf.constant(num_samples), precision, c)
        log_p.append(terms["log_prob"].numpy().astype(np.float64))
        reconstruction.append(terms["reconstruction"].numpy().astype(np.float64))
        kl.append(terms["kl"].numpy().astype(np.float64))
        seen, total = seen + len(log_p[-1]), total + log_p[-1].sum()
        progress.update(seen, [("log_likelihood", total / seen)], finalize=False)
    if not log_p:
        raise _no_examples()
    progress.update(seen, [("log_likelihood", total / seen)], finalize=True)
    log_p, reconstruction, kl = (np.concatenate(v) for v in (log_p, reconstruction, kl))
    checks.finite_estimate(log_p, "log_likelihood")

    mean = float(np.mean(log_p))
    elbo = float(np.mean(reconstruction - kl))
    return {
        "log_likelihood": mean,
        "log_likelihood_stderr": _stderr(log_p),
        "bits_per_dim": -mean / (dimensions * math.log(2.0)),
        "elbo": elbo,
        "reconstruction": float(np.mean(reconstruction)),
        "kl": float(np.mean(kl)),
        "gap": mean - elbo,
        "num_examples": len(log_p),
        "num_samples": num_samples,
    }


def active_units(model, data, threshold=0.01, batch_size=1000, return_variances=False, condition=None):
    """The number of latent units whose posterior mean varies over x: Var_x(E_q[z_u|x]) > threshold.

    A unit whose q(z_u|x) ignores x (collapsed onto the prior) has a constant mean and counts as
    inactive (Burda et al. 2015, section 5.2).

    Args:
        model: a `tfvae.VAE`.
        data: array of shape (N, *model.event_shape), or a `tf.data.Dataset` of x or (x, labels).
        threshold: the variance above which a unit is active, >= 0.
        batch_size: examples per batch for arrays and unbatched datasets.
        return_variances: also return the per-unit variances.
        condition: for a conditional model and array data, the conditions, (N, *condition_shape).

    Returns:
        The count (int), or (count, variances [latent_dim] numpy) with `return_variances`.
    """
    threshold = arguments.finite_float(threshold, "threshold", inclusive=True)
    batches, _ = _batches(model, data, batch_size, condition)
    count, total, total_squares = 0, 0.0, 0.0
    for x, c in batches:
        mean = model.encode(x, condition=c).mean().numpy().astype(np.float64)
        count += len(mean)
        total = total + mean.sum(axis=0)
        total_squares = total_squares + np.square(mean).sum(axis=0)
    if count == 0:
        raise _no_examples()
    # In float64 the one-pass E[m^2] - E[m]^2 loses nothing at these magnitudes.
    variances = np.maximum(total_squares / count - np.square(total / count), 0.0)
    active = int(np.sum(variances > threshold))
    return (active, variances) if return_variances else active


def amortization_gap(
    model, data, steps=100, learning_rate=1e-2, num_samples=1, elbo_samples=100, batch_size=500, seed=None,
    condition=None,
):
    """How much ELBO per example `model.infer` gains over the encoder's q(z|x): the amortization gap it closes.

    Both ELBOs are estimated with the same `elbo_samples` draws of eps (common random numbers),
    so their difference is measured far more precisely than either ELBO.

    Args:
        model: a `tfvae.VAE`.
        data: array of shape (N, *model.event_shape), or a `tf.data.Dataset` of x or (x, labels).
        steps, learning_rate, num_samples: passed to `model.infer`.
        elbo_samples: samples of z per example in each ELBO estimate.
        batch_size: examples per batch for arrays and unbatched datasets.
        seed: an int for reproducible numbers; None takes the model's next seed.
        condition: for a conditional model and array data, the conditions, (N, *condition_shape).

    Returns:
        A dict: "amortized_elbo", "refined_elbo" (means, nats), "amortization_gap" (their mean
        difference, refined - amortized), "amortization_gap_stderr", "num_examples", "steps".
    """
    elbo_samples = arguments.positive_int(elbo_samples, "elbo_samples")
    dimensions = math.prod(model.event_shape)
    batch_size = _bounded_batch(elbo_samples, dimensions, batch_size, f"elbo_samples={elbo_samples}")
    # refine's steps run in one graph per batch: their samples count like the ELBO's.
    steps_samples = arguments.non_negative_int(steps, "steps") * arguments.positive_int(num_samples, "num_samples")
    batch_size = _bounded_batch(max(steps_samples, 1), dimensions, batch_size,
                                f"steps={steps} with num_samples={num_samples}")
    batches, _ = _batches(model, data, batch_size, condition)
    seed = checks.seed(seed)
    if seed is None:
        seed = model.seed_generator.next().numpy().tolist()
    # numpy's generator takes seeds >= 0: a negative int64 seed is taken as its two's complement.
    seeds = np.random.default_rng(np.asarray(seed, dtype=object) % 2**64)
    amortized, refined = [], []
    for x, c in batches:
        refine_seed, elbo_seed = (int(s) for s in seeds.integers(0, 2**31 - 1, size=2))
        q = inference.refine(model, x, steps, learning_rate, num_samples, seed=refine_seed, condition=c)
        amortized.append(inference.elbo(model, x, model.encode(x, c), elbo_samples, seed=elbo_seed, condition=c).numpy())
        refined.append(inference.elbo(model, x, q, elbo_samples, seed=elbo_seed, condition=c).numpy())
    if not refined:
        raise _no_examples()
    amortized, refined = (np.concatenate(v).astype(np.float64) for v in (amortized, refined))
    return {
        "amortized_elbo": float(np.mean(amortized)),
        "refined_elbo": float(np.mean(refined)),
        "amortization_gap": float(np.mean(refined - amortized)),
        "amortization_gap_stderr": _stderr(refined - amortized),
        "num_examples": len(refined),
        "steps": steps,
    }


def _bounded_batch(num_samples, dimensions, batch_size, request):
    """The batch size, at most `batch_size`, whose step of `num_samples` samples per example stays within
    tfvae.resources' work rule, or a ResourceError if one example's samples alone would exceed it."""
    batch_size = arguments.positive_int(batch_size, "batch_size")
    resources.check_step(num_samples * dimensions, f"{request} (per example)")
    return resources.examples_per_step(num_samples, dimensions, batch_size)


def _no_examples():
    return ValueError("data: expected at least one example; got a dataset that yielded none.")


def _stderr(values):
    if len(values) < 2:
        return float("nan")
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def _batches(model, data, batch_size, condition=None, name="data"):
    """Checks `data` (and the conditions) and returns (an iterable of float32 batches (x, condition), the
    number of examples or None); the condition is None for an unconditional model."""
    batch_size = arguments.positive_int(batch_size, "batch_size")
    if isinstance(data, tf.data.Dataset):
        if condition is not None:
            raise ValueError(
                "condition: a dataset carries its own conditions, as (x, condition) pairs; got condition= as well."
            )
        return _dataset_batches(model, data, batch_size, name)
    if data is None:
        raise ValueError(f"{name}: expected an array of shape (N, {', '.join(map(str, model.event_shape))}) or a tf.data.Dataset; got None.")
    x = model.as_input(data, name)
    c = model.as_condition(condition, x.shape[0])
    batches = ((x[i : i + batch_size], None if c is None else c[i : i + batch_size]) for i in range(0, x.shape[0], batch_size))
    return batches, int(x.shape[0])


def _dataset_batches(model, data, batch_size, name):
    cardinality = int(data.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError(f"{name}: expected a finite dataset; got an infinite one (drop the .repeat()).")
    if cardinality == 0:
        raise ValueError(f"{name}: expected a non-empty dataset; got a dataset with no elements.")
    spec = data.element_spec
    spec = spec[0] if isinstance(spec, (tuple, list)) else spec
    if not isinstance(spec, tf.TensorSpec):
        raise TypeError(f"{name}: expected a dataset of tensors x or (x, labels); got elements {spec}.")
    if model.condition_shape is not None:
        checks.check_dataset_conditions(data, model.condition_shape, name)
    if spec.shape.rank == len(model.event_shape):
        data = data.batch(batch_size)  # a dataset of single examples
    else:
        checks.check_shape(spec.shape, model.event_shape, name)

    def batches():
        for element in data:
            x = model.as_input(element[0] if isinstance(element, (tuple, list)) else element, name)
            condition = element[1] if model.condition_shape is not None else None
            yield x, model.as_condition(condition, x.shape[0], f"condition ({name})")

    return batches(), None


class LogProbEstimate(NamedTuple):
    """Per-example estimates of log p(x) with their reliability, each a float64 numpy array [B].

    log_prob: logsumexp_k log w_k - log K, the importance-weighted estimate (in nats).
    stderr: its Monte Carlo standard error by the delta method, sqrt(Var(w) / K) / mean(w); NaN for
        K = 1, where no variance can be measured.
    ess: the effective sample size of the normalized weights, (sum w)^2 / sum w^2, in [1, K].
    pareto_k: PSIS k-hat of the K log-weights (Vehtari et al.; arviz-stats computes it, the
        `diagnostics` extra); above 0.7 the estimate is unreliable. NaN without arviz-stats, for K < 5,
        and for weights all equal (no tail).
    """

    log_prob: np.ndarray
    stderr: np.ndarray
    ess: np.ndarray
    pareto_k: np.ndarray


METHODS = ("importance", "ais")


def log_prob_estimate(model, x, num_samples=1000, proposal="encoder", condition=None, seed=None,
                      method="importance", ais_steps=100):
    """log p(x) for each example by importance sampling, with its standard error, ESS and PSIS k-hat.

    log w_k = log p(x|z_k) + log p(z_k) - log r(z_k) for z_k ~ r, the proposal: the encoder's
    q(z|x), q refined per example by `model.infer` (often a far better proposal where the encoder
    fits badly), or any TFP distribution over z with batch shape [B].

    `method="ais"` is annealed importance sampling instead (Neal 2001; Wu et al. 2017 evaluated VAEs
    with it): `num_samples` chains start at z ~ p(z) and move through `ais_steps` intermediate densities
    p(z) p(x|z)^beta, beta from 0 to 1, by one HMC transition each (`tfp.mcmc.sample_annealed_importance_chain`);
    the chains' log-weights are the w_k above, and unbiased for p(x) whatever the mixing.

    Args:
        model: a `tfvae.VAE`.
        x: a batch of shape (B, *model.event_shape).
        num_samples: K, importance samples (or AIS chains) per example, >= 1.
        proposal: "encoder", "refined" (`model.infer(x)` with its defaults), or a TFP distribution
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
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}; got {method!r}.")
    ais_steps = arguments.positive_int(ais_steps, "ais_steps")
    if method == "ais" and not (isinstance(proposal, str) and proposal == "encoder"):
        raise ValueError(f"proposal: AIS starts from the prior p(z) and takes no proposal; got {proposal!r}.")
    x = model.as_input(x)
    condition = model.as_condition(condition, x.shape[0])
    resources.check_step(num_samples * math.prod(model.event_shape), "num_samples")  # one example's K at once
    if method == "ais":
        resources.check_step(ais_steps * num_samples * x.shape[0] * math.prod(model.event_shape), "ais_steps")
        log_w = _ais_log_weights(model, x, num_samples, ais_steps, condition,
                                 noise.stateless_seed(seed, model.seed_generator))
    else:
        q = objectives.proposal_distribution(model, x, proposal, condition, seed)
        log_w = objectives.proposal_log_weights(model, x, q, num_samples, condition, seed, isinstance(proposal, str))
    estimate = _diagnosed(log_w)
    checks.finite_estimate(estimate.log_prob, "log_prob_estimate", x=x, condition=condition)
    return estimate


# HMC within AIS: leapfrog steps per transition and their size, for latent spaces near N(0, I).
_AIS_LEAPFROG_STEPS, _AIS_STEP_SIZE = 5, 0.1


def _ais_log_weights(model, x, num_chains, num_steps, condition, seed):
    """AIS log-weights [chains, B] (float64) of log p(x), from the prior to the posterior by HMC."""
    prior = model.prior
    start = prior.sample([num_chains, int(x.shape[0])], seed=tf.cast(seed, tf.int32))

    def target(z):
        return prior.log_prob(z) + model.log_likelihood(x, z, condition)

    def kernel(log_prob):
        return tfp.mcmc.HamiltonianMonteCarlo(log_prob, step_size=_AIS_STEP_SIZE, num_leapfrog_steps=_AIS_LEAPFROG_STEPS)

    @tf.function(autograph=False)
    def chains(start, seed):
        _, log_w, _ = tfp.mcmc.sample_annealed_importance_chain(
            num_steps=num_steps, proposal_log_prob_fn=prior.log_prob, target_log_prob_fn=target,
            current_state=start, make_kernel_fn=kernel, seed=seed)
        return log_w

    return chains(start, tf.cast(seed, tf.int32) + 1).numpy().astype(np.float64)


def _diagnosed(log_w):
    """The `LogProbEstimate` of log-weights [K, B]."""
    num_samples = log_w.shape[0]
    w = np.exp(log_w - log_w.max(axis=0))  # in (0, 1], the largest 1
    mean = w.mean(axis=0)
    log_prob = objectives.log_mean_exp(log_w)
    stderr = np.sqrt(w.var(axis=0, ddof=1) / num_samples) / mean if num_samples > 1 else np.full_like(mean, np.nan)
    ess = np.square(w.sum(axis=0)) / np.square(w).sum(axis=0)
    return LogProbEstimate(log_prob, stderr, ess, _pareto_k(log_w))


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
            k_hat[column] = float(array_stats.psislw(log_w[:, column], r_eff=1.0, axis=-1)[1])
        except ValueError:  # "All tail values are the same"
            pass
    return k_hat
