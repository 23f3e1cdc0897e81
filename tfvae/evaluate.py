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

Per-example estimates with their reliability (`log_prob_estimate`, by importance sampling or AIS) and
bidirectional Monte Carlo bounds (`bdmc`) live in `tfvae.estimates` and are named here too.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from tfvae import arguments, checks, inference, objectives, proposals, resources
from tfvae import precision as tfvae_precision
from tfvae.estimates import BDMCBounds, LogProbEstimate, bdmc, log_prob_estimate, unreliable  # noqa: F401 (public)
from tfvae.estimates import _check_estimator, _diagnosed, _nanmax


def log_likelihood(model, data, num_samples=5000, batch_size=100, verbose=1, precision="float32", condition=None,
                   proposal="encoder", method="importance", ais_steps=100):
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
        proposal, method, ais_steps: the estimator of log p(x), as `log_prob_estimate` takes them
            (the proposal by name: "encoder" or "refined"). The
            default, the encoder's proposal, is the compiled estimator (and the only one bfloat16 runs);
            the others add a pass of it for the ELBO's terms.

    Returns:
        A dict of floats: "log_likelihood" (mean log p(x)), "log_likelihood_stderr" (sample standard
        deviation of per-example log p(x) / sqrt(N); NaN for one example), "bits_per_dim"
        (-log_likelihood / (D ln 2), D = prod(event_shape)), "elbo", "reconstruction" (E_q log p(x|z)),
        "kl", for a hierarchy "kl_z1" ... "kl_zL" (each layer's KL, which sum to "kl"), "gap"
        (log_likelihood - elbo), the reliability of the per-example estimates
        ("pareto_k_max", "ess_min", and "unreliable_fraction", the share the `unreliable` flag marks),
        the ints "num_examples" and "num_samples", and the strings "proposal" and "method".
    """
    num_samples = arguments.positive_int(num_samples, "num_samples")
    precision = tfvae_precision.check(precision)
    if not isinstance(proposal, str):  # a distribution fits one batch
        raise TypeError(f"proposal: expected one of {', '.join(proposals.PROPOSALS)} (a distribution has one batch's "
                        f"shape: give it to log_prob_estimate); got {type(proposal).__name__}.")
    _check_estimator(proposal, method, ais_steps, precision)
    dimensions = math.prod(model.event_shape)
    batch_size = _bounded_batch(num_samples, dimensions, batch_size, f"num_samples={num_samples}")
    batches, num_examples = _batches(model, data, batch_size, condition)
    progress = keras.utils.Progbar(
        num_examples, verbose=verbose, stateful_metrics=["log_likelihood"], unit_name="example"
    )
    log_p, reconstruction, kl, estimates, layers = [], [], [], [], []
    seen, total = 0, 0.0
    compiled = method == "importance" and proposals.is_encoder(proposal)
    for x, c in batches:
        terms = model.importance_sampled(x, tf.constant(num_samples), precision, c, with_log_weights=compiled)
        if compiled:
            estimates.append(_diagnosed(terms["log_weights"].numpy().astype(np.float64)))
            log_p.append(terms["log_prob"].numpy().astype(np.float64))
        else:
            estimates.append(log_prob_estimate(model, x, num_samples, proposal, c, method=method, ais_steps=ais_steps))
            log_p.append(estimates[-1].log_prob)
        reconstruction.append(terms["reconstruction"].numpy().astype(np.float64))
        kl.append(terms["kl"].numpy().astype(np.float64))
        layers.append({name: value.numpy().astype(np.float64) for name, value in terms.items() if name.startswith("kl_z")})
        seen, total = seen + len(log_p[-1]), total + log_p[-1].sum()
        progress.update(seen, [("log_likelihood", total / seen)], finalize=False)
    if not log_p:
        raise _no_examples()
    progress.update(seen, [("log_likelihood", total / seen)], finalize=True)
    log_p, reconstruction, kl = (np.concatenate(v) for v in (log_p, reconstruction, kl))
    checks.finite_estimate(log_p, "log_likelihood")
    estimate = LogProbEstimate(*(np.concatenate(field) for field in zip(*estimates)))

    mean = float(np.mean(log_p))
    elbo = float(np.mean(reconstruction - kl))
    return {
        "log_likelihood": mean,
        "log_likelihood_stderr": _stderr(log_p),
        "bits_per_dim": -mean / (dimensions * math.log(2.0)),
        "elbo": elbo,
        "reconstruction": float(np.mean(reconstruction)),
        "kl": float(np.mean(kl)),
        **{name: float(np.mean(np.concatenate([batch[name] for batch in layers]))) for name in layers[0]},
        "gap": mean - elbo,
        "pareto_k_max": _nanmax(estimate.pareto_k),
        "ess_min": float(np.min(estimate.ess)),
        "unreliable_fraction": float(np.mean(estimate.unreliable)),
        "num_examples": len(log_p),
        "num_samples": num_samples,
        "proposal": proposal,
        "method": method,
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

    For a hierarchy (`latent_dim=(d_1, ..., d_L)`) the units are counted per layer, E_q[z] being the
    posterior's mean as `tfvae.heads.Chain.mean` takes it (each layer's given the mean of the one drawn before).

    Returns:
        The count (int), for a hierarchy a list of counts, one per layer, bottom first; with
        `return_variances`, (count(s), variances [latent_dim] numpy).
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
    active = [int(np.sum(layer > threshold)) for layer in np.split(variances, np.cumsum(model.latent_dims)[:-1])]
    active = active[0] if len(active) == 1 else active
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
    batch_size = arguments.batch_size(batch_size)
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
    batch_size = arguments.batch_size(batch_size)
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
