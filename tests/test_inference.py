"""Tests for semi-amortized inference: model.infer / tfvae.inference.refine and the gap it closes."""

import keras
import numpy as np
import pytest
from tensorflow_probability import distributions as tfd

import tfvae
from tfvae import evaluate, inference, networks


def small_vae(latent_dim=8, **kwargs):
    return tfvae.VAE(
        input_shape=(64,), latent_dim=latent_dim, encoder=networks.MLP([64]), decoder=networks.MLP([64]), **kwargs
    )


@pytest.fixture(scope="module")
def trained(digits):
    keras.utils.set_random_seed(0)
    model = small_vae(seed=0)
    model.compile(keras.optimizers.Adam(3e-3))
    model.fit(digits[0], epochs=10, batch_size=100, verbose=0)
    return model


def test_infer_raises_the_elbo_closing_part_of_the_amortization_gap(trained, digits):
    x = digits[1]
    weights = [w.copy() for w in trained.get_weights()]

    gap = evaluate.amortization_gap(trained, x, steps=100, elbo_samples=100, seed=0)

    # Refined >= amortized on average, by many standard errors (the same eps in both ELBOs).
    assert gap["refined_elbo"] > gap["amortized_elbo"]
    assert gap["amortization_gap"] > 5 * gap["amortization_gap_stderr"]
    assert gap["num_examples"] == len(x) and gap["steps"] == 100
    # Only the posteriors moved: the model is untouched.
    for before, after in zip(weights, trained.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_infer_returns_a_posterior_like_encode(trained, digits):
    x = digits[1][:10]
    q = trained.infer(x, steps=5, seed=0)
    encoded = trained.encode(x)

    assert isinstance(q, type(encoded))
    assert q.batch_shape == encoded.batch_shape == (10,)
    assert q.event_shape == encoded.event_shape == (8,)
    assert np.all(np.isfinite(q.sample(seed=1).numpy()))
    # Zero steps is the encoder's own posterior.
    q0 = trained.infer(x, steps=0)
    np.testing.assert_allclose(q0.mean(), encoded.mean(), rtol=1e-6)
    np.testing.assert_allclose(q0.stddev(), encoded.stddev(), rtol=1e-6)


def test_infer_is_reproducible_with_a_seed(trained, digits):
    x = digits[1][:10]
    a, b = trained.infer(x, steps=10, seed=3), trained.infer(x, steps=10, seed=3)
    np.testing.assert_array_equal(a.mean(), b.mean())
    assert not np.array_equal(a.mean(), trained.infer(x, steps=10, seed=4).mean())


def test_each_example_is_refined_on_its_own(trained, digits):
    """An example's refined posterior does not depend on which other examples share its batch."""
    x = digits[1][:6]
    together = trained.infer(x, steps=20, learning_rate=1e-2, num_samples=4, seed=0).mean().numpy()
    # Same noise for example 0 either way needs a batch of the same size: swap the others.
    shuffled = np.concatenate([x[:1], x[1:][::-1]])
    apart = trained.infer(shuffled, steps=20, learning_rate=1e-2, num_samples=4, seed=0).mean().numpy()
    np.testing.assert_allclose(apart[0], together[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("posterior, prior", [("full", "normal"), ("diagonal", "mixture")])
def test_infer_works_for_other_posteriors_and_priors(digits, posterior, prior):
    model = small_vae(latent_dim=3, posterior=posterior, prior=prior, seed=0)
    model.fit(digits[0], epochs=2, batch_size=100, verbose=0)
    x = digits[1][:50]
    q = model.infer(x, steps=50, num_samples=4, seed=0)

    assert isinstance(q, tfd.MultivariateNormalTriL if posterior == "full" else tfd.Independent)
    refined = inference.elbo(model, x, q, num_samples=200, seed=1).numpy()
    amortized = inference.elbo(model, x, model.encode(x), num_samples=200, seed=1).numpy()
    assert refined.mean() > amortized.mean()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": -1}, "steps: expected an integer >= 0; got -1"),
        ({"steps": 2.5}, "steps"),
        ({"learning_rate": 0.0}, "learning_rate: expected a finite number > 0"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"num_samples": 0}, "num_samples: expected an integer >= 1; got 0"),
    ],
)
def test_infer_rejects_bad_arguments(trained, digits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        trained.infer(digits[1][:4], **kwargs)


def test_infer_rejects_data_of_the_wrong_shape(trained):
    with pytest.raises(ValueError, match=r"x: expected a batch of shape \(batch, 64\); got shape \(4, 63\)"):
        trained.infer(np.zeros((4, 63), np.float32))


def test_elbo_rejects_a_posterior_of_the_wrong_shape(trained, digits):
    with pytest.raises(ValueError, match="q: expected batch shape"):
        inference.elbo(trained, digits[1][:4], trained.encode(digits[1][:5]))
    with pytest.raises(ValueError, match="num_samples"):
        inference.elbo(trained, digits[1][:4], trained.encode(digits[1][:4]), num_samples=0)


def test_one_start_of_the_refined_mixture_is_refine(trained, digits):
    x = digits[1][:10]
    mixture = inference.refined_mixture(trained, x, starts=1, steps=20, seed=3)
    alone = inference.refine(trained, x, steps=20, seed=3)
    np.testing.assert_allclose(mixture.components[0].mean(), alone.mean(), rtol=1e-6)
    np.testing.assert_allclose(mixture.components[0].stddev(), alone.stddev(), rtol=1e-6)
    np.testing.assert_allclose(mixture.cat.probs_parameter(), 1.0)


def test_the_refined_mixture_weighs_its_starts_by_their_elbos(trained, digits):
    x = digits[1][:10]
    starts = 4
    mixture = inference.refined_mixture(trained, x, starts=starts, steps=30, seed=5, elbo_samples=2000)
    assert mixture.batch_shape == (10,) and mixture.event_shape == (8,) and len(mixture.components) == starts
    weights = mixture.cat.probs_parameter().numpy()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    floor = inference.DEFENSIVE_SHARE / starts
    assert np.all(weights >= floor - 1e-7)
    # Above the floor, the weights are the softmax of the starts' ELBOs (2,000 draws each here): their
    # log-ratios are the differences of the ELBOs, which other noise (20,000 draws each) measures again to
    # within 0.3 nats.
    shares = (weights - floor) / (1.0 - inference.DEFENSIVE_SHARE)
    bounds = np.stack([inference.elbo(trained, x, q, num_samples=20000, seed=7).numpy() for q in mixture.components], 1)
    seen = shares > 1e-3
    log_ratio = np.log(np.where(seen, shares, 1.0)) - np.log(shares.max(axis=1, keepdims=True))
    difference = bounds - bounds[np.arange(len(x)), shares.argmax(axis=1)][:, None]
    np.testing.assert_allclose(log_ratio[seen], difference[seen], atol=0.3)
    # The starts drawn from the prior begin elsewhere than the encoder's q: they are other posteriors.
    means = np.stack([q.mean().numpy() for q in mixture.components])
    assert np.all(np.linalg.norm(means[1:] - means[0], axis=-1).mean(axis=0) > 0.1)


def test_the_refined_mixture_refuses_no_starts(trained, digits):
    with pytest.raises(ValueError, match="starts: expected an integer >= 1; got 0"):
        inference.refined_mixture(trained, digits[1][:3], starts=0)
