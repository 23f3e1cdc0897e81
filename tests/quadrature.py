"""log p(x) of a model with a 2-D latent by quadrature: the exact answer the estimators are held to."""

import math

import numpy as np
import tensorflow as tf

from tfvae import objectives


def exact_log_prob(model, x, limit=6.0, points=301, center=(0.0, 0.0)):
    """log p(x) = log ∫ p(x|z) p(z) dz by a Riemann sum on a points x points grid over
    center + [-limit, limit]^2 (a learned prior need not keep z near 0).

    Works for any likelihood and prior head: it asks the model for p(x|z) on the grid
    (`model.likelihood`) and for p(z) (`model.prior`).
    """
    axis = np.linspace(-limit, limit, points, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2) + np.float32(center)
    likelihood = model.likelihood(tf.constant(grid))
    log_prior = model.prior.log_prob(grid)
    cell = math.log((axis[1] - axis[0]) ** 2)
    x = np.asarray(x, np.float32)
    return np.array([tf.reduce_logsumexp(likelihood.log_prob(xi) + log_prior).numpy() + cell for xi in x])


def importance_sampling_stderr(model, x, num_samples):
    """The standard error of log mean_k w_k for K = num_samples importance weights, per example
    (delta method: std(w) / (mean(w) sqrt(K))): how far `model.log_prob` may be from the exact value."""
    x = tf.constant(x)
    sample = objectives.posterior_sample(model, x, model.posterior(x), model.noise(num_samples, len(x)))
    log_weights = objectives.log_weights(sample).numpy().astype(np.float64)
    weights = np.exp(log_weights - log_weights.max(axis=0))
    return weights.std(axis=0) / (weights.mean(axis=0) * math.sqrt(num_samples))


def assert_same_estimator(run, model, x, num_samples, repeats=30, sigmas=5.0):
    """Holds an unseeded K-sample estimator of log p(x) (an exported `log_prob` signature) to
    `model.log_prob(x, K)`: the means of `repeats` runs of each agree within `sigmas` standard errors
    of their difference, measured from the runs' own spread.

    Two runs of the same estimator share its bias (an IWAE bound of K samples is below log p(x)) and
    its skewed spread, so the comparison needs neither a delta-method standard error, which is too
    small for heavy-tailed weights, nor a K = 5000 reference.

    Args:
        run: `run() -> [B]`, one fresh estimate from the estimator under test.
        model: the `tfvae.VAE` it was exported from.
        x: the batch [B, ...] both score.
    """
    tested = np.stack([np.asarray(run(), np.float64) for _ in range(repeats)])
    keras_runs = np.stack([model.log_prob(x, num_samples=num_samples).numpy().astype(np.float64) for _ in range(repeats)])
    stderr = np.sqrt((tested.var(axis=0, ddof=1) + keras_runs.var(axis=0, ddof=1)) / repeats)
    difference = np.abs(tested.mean(axis=0) - keras_runs.mean(axis=0))
    np.testing.assert_array_less(difference, sigmas * stderr + 1e-3)
