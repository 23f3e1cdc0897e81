"""The heads build the distributions the math asks for, and KL(q || p) is right."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_probability import distributions as tfd

from tfvae import VAE, heads, objectives, signatures


def _monte_carlo_kl(q, p, num_samples=20000):
    """Mean and standard error of log q(z) - log p(z) over z ~ q, per example."""
    z = q.sample(num_samples, seed=(1, 2))
    log_ratio = (q.log_prob(z) - p.log_prob(z)).numpy()
    return log_ratio.mean(axis=0), log_ratio.std(axis=0) / math.sqrt(num_samples)


@pytest.mark.parametrize("posterior", ["diagonal", "full"])
def test_analytic_kl_matches_monte_carlo_within_standard_error(posterior, digits):
    model = VAE(input_shape=(64,), latent_dim=3, posterior=posterior)
    q = model.encode(digits[0][:5])
    analytic = tfd.kl_divergence(q, model.prior).numpy()
    estimate, stderr = _monte_carlo_kl(q, model.prior)
    assert np.all(analytic > 0)
    np.testing.assert_array_less(np.abs(analytic - estimate), 4 * stderr)


def test_full_covariance_kl_is_registered_and_equals_the_closed_form():
    """KL(N(m, LL^T) || N(0, I)) = 0.5 (tr(LL^T) + m^T m - d - log det LL^T)."""
    loc = tf.constant([[0.5, -1.0]])
    tril = tf.constant([[[0.8, 0.0], [0.3, 0.5]]])
    q = tfd.MultivariateNormalTriL(loc, tril)
    p = heads.StandardNormal(latent_dim=2).distribution()
    cov = tril[0].numpy() @ tril[0].numpy().T
    closed_form = 0.5 * (np.trace(cov) + loc.numpy() @ loc.numpy().T - 2 - np.log(np.linalg.det(cov)))
    np.testing.assert_allclose(tfd.kl_divergence(q, p).numpy(), closed_form.ravel(), rtol=1e-5)


def test_mixture_prior_falls_back_to_a_monte_carlo_kl(digits):
    model = VAE(input_shape=(64,), latent_dim=2, prior="mixture")
    q = model.encode(digits[0][:4])
    with pytest.raises(NotImplementedError):
        tfd.kl_divergence(q, model.prior)
    z = q.sample(50000, seed=(3, 4))
    estimate, stderr = _monte_carlo_kl(q, model.prior, 50000)
    sample = objectives.PosteriorSample(q, model.prior, z, None, None, q.log_prob(z))
    kl = objectives.kl_divergence(sample).numpy()
    np.testing.assert_allclose(kl, estimate, atol=4 * stderr.max())


def test_posterior_scale_has_its_floor_and_mean_is_the_location():
    head = heads.DiagonalGaussian(latent_dim=2, min_scale=1e-3)
    params = tf.constant([[1.0, -2.0, -100.0, 0.0]])
    q = head.distribution(params)
    np.testing.assert_allclose(q.mean().numpy(), [[1.0, -2.0]])
    np.testing.assert_allclose(q.stddev().numpy(), [[1e-3, math.log(2.0) + 1e-3]], rtol=1e-5)


def test_posterior_log_variance_form_is_clipped_like_a_hardtanh(tmp_path):
    head = heads.DiagonalGaussian(latent_dim=5, log_variance_range=(-6, 2))
    raw = tf.constant([[-10.0, -6.0, 0.0, 2.0, 5.0]])
    with tf.GradientTape() as tape:
        tape.watch(raw)
        stddev = head.distribution(tf.concat([tf.zeros_like(raw), raw], axis=-1)).stddev()
    # sigma = exp(clip(raw, -6, 2) / 2), with d sigma / d raw = sigma / 2 inside the range and 0 outside.
    expected = np.exp(np.clip(raw.numpy(), -6, 2) / 2)
    np.testing.assert_allclose(stddev, expected, rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(stddev, raw), [[0.0, expected[0, 1] / 2, 0.5, expected[0, 3] / 2, 0.0]],
                               rtol=1e-6)
    model = VAE(input_shape=(64,), latent_dim=5, posterior=head)
    model.save(tmp_path / "model.keras")
    assert keras.models.load_model(tmp_path / "model.keras").posterior_head.log_variance_range == [-6.0, 2.0]
    for bad in ((2, -6), (0, float("nan")), (1, 2, 3), "ab", 5):
        with pytest.raises(ValueError, match=r"log_variance_range: expected \(low, high\), finite numbers with low < high; got"):
            heads.DiagonalGaussian(latent_dim=2, log_variance_range=bad)


def test_reparameterized_samples_have_the_posterior_moments():
    head = heads.FullCovarianceGaussian(latent_dim=2)
    q = head.distribution(tf.constant([[1.0, -1.0, 0.3, 0.5, -0.2]]))
    eps = tf.random.stateless_normal([200000, 1, 2], seed=(5, 6))
    z = head.reparameterize(q, eps).numpy()[:, 0]
    np.testing.assert_allclose(z.mean(axis=0), q.mean().numpy()[0], atol=0.01)
    np.testing.assert_allclose(np.cov(z.T), q.covariance().numpy()[0], atol=0.01)


def test_likelihoods_give_one_log_prob_per_example():
    x = np.random.RandomState(0).rand(3, 4, 4, 1).astype(np.float32)
    bernoulli = heads.Bernoulli(event_shape=(4, 4, 1)).distribution(tf.zeros([3, 4, 4, 1]))
    # Logits 0 give p = 1/2: the cross-entropy is 16 ln 2 for any x in [0, 1].
    np.testing.assert_allclose(bernoulli.log_prob(x).numpy(), [-16 * math.log(2)] * 3, rtol=1e-6)
    gaussian_head = heads.Gaussian(event_shape=(4, 4, 1))
    gaussian = gaussian_head.distribution(tf.constant(x))
    # At its mean, with unit scale (+ floor), each of the 16 values has log density -0.5 ln(2 pi) - ln(scale).
    expected = 16 * (-0.5 * math.log(2 * math.pi) - math.log(1 + gaussian_head.min_scale))
    np.testing.assert_allclose(gaussian.log_prob(x).numpy(), [expected] * 3, rtol=1e-5)


def test_bernoulli_log_prob_equals_tfp_bernoulli():
    logits = tf.constant(np.random.RandomState(1).randn(5, 16) * 8, tf.float32)
    x = np.random.RandomState(2).rand(5, 16).astype(np.float32)
    x[:, :8] = np.round(x[:, :8])
    ours = heads.Bernoulli(event_shape=(16,)).distribution(logits)
    tfp_bernoulli = tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), reinterpreted_batch_ndims=1)
    np.testing.assert_allclose(ours.log_prob(x).numpy(), tfp_bernoulli.log_prob(x).numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours.mean().numpy(), tf.sigmoid(logits).numpy(), rtol=1e-6)


@pytest.mark.parametrize("smallest_scale", [0.3, 0.05])
def test_gaussian_mixture_log_prob_as_one_matrix_product_equals_tfps(smallest_scale):
    """The GEMM form of log p(z) for diagonal components against TFP's broadcast form in float64, on z
    drawn from the mixture itself (the z where cancellation in z^2 P - 2 z loc P + loc^2 P is worst)."""
    rng = np.random.default_rng(0)
    logits, loc = rng.normal(size=500), rng.normal(scale=1.5, size=(500, 40))
    scale = rng.uniform(smallest_scale, 1.0, size=(500, 40))

    def mixture(cls, dtype):
        components = tfd.Independent(tfd.Normal(tf.constant(loc, dtype), tf.constant(scale, dtype)), 1)
        return cls(tfd.Categorical(logits=tf.constant(logits, dtype)), components)

    reference = mixture(tfd.MixtureSameFamily, tf.float64)
    z = reference.sample([20, 50], seed=1)
    exact = reference.log_prob(z).numpy()
    np.testing.assert_allclose(mixture(heads.GaussianMixture, tf.float64).log_prob(z), exact, atol=1e-9)
    error = mixture(heads.GaussianMixture, tf.float32).log_prob(tf.cast(z, tf.float32)).numpy() - exact
    assert error.shape == (20, 50)
    # float32 rounding of terms of size |z|^2 / scale^2: well under a millinat on average.
    assert abs(error.mean()) < 1e-4 and np.abs(error).max() < 1e-2


def test_diagonal_normal_reads_independent_normals_over_one_dimension_only():
    loc, scale = tf.constant([0.5, -1.0]), tf.constant([[1.0, 2.0], [0.5, 0.25], [3.0, 1.0]])
    normal = heads.diagonal_normal(tfd.Independent(tfd.Normal(loc, scale), 1))
    # loc [2] is broadcast against scale [3, 2], as the mixture's GEMM form needs one [C, D] of each.
    np.testing.assert_array_equal(normal.loc, np.broadcast_to(loc, (3, 2)))
    np.testing.assert_array_equal(normal.scale, scale)
    assert heads.diagonal_normal(tfd.Normal(loc, 1.0)) is None
    assert heads.diagonal_normal(tfd.Independent(tfd.Normal(scale, 1.0), 2)) is None
    assert heads.diagonal_normal(tfd.MultivariateNormalDiag(loc, [1.0, 1.0])) is None
    # A mixture of components with one shared loc takes the GEMM form and equals TFP's.
    components = tfd.Independent(tfd.Normal(loc, scale), 1)
    mixture = heads.GaussianMixture(tfd.Categorical(logits=[0.0, 1.0, -1.0]), components)
    z = tf.random.stateless_normal([7, 2], seed=[3, 4])
    reference = tfd.MixtureSameFamily(tfd.Categorical(logits=[0.0, 1.0, -1.0]), components).log_prob(z)
    np.testing.assert_allclose(mixture.log_prob(z), reference, atol=1e-5)


def test_the_mixture_priors_log_prob_is_the_matrix_product_form():
    for prior in ("mixture", "vamp"):
        model = VAE(input_shape=(64,), latent_dim=3, prior=prior)
        assert isinstance(model.prior, heads.GaussianMixture)
        z = tf.random.stateless_normal([4, 5, 3], seed=[1, 2])
        broadcast = tfd.MixtureSameFamily(model.prior.mixture_distribution, model.prior.components_distribution)
        np.testing.assert_allclose(model.prior.log_prob(z), broadcast.log_prob(z), atol=1e-4)


def test_unknown_head_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"likelihood: expected one of \['bernoulli', 'continuous_bernoulli', 'discretized_logistic', 'gaussian', 'negative_binomial', 'poisson'\]; got 'laplace'"):
        VAE(input_shape=(4,), latent_dim=2, likelihood="laplace")
    with pytest.raises(ValueError, match=r"prior: expected one of \['mixture', 'normal', 'vamp'\]"):
        VAE(input_shape=(4,), latent_dim=2, prior="laplace")
    with pytest.raises(ValueError, match=r"posterior: expected one of \['diagonal', 'full'\]"):
        VAE(input_shape=(4,), latent_dim=2, posterior="flow")
    with pytest.raises(TypeError, match="posterior: expected one of"):
        VAE(input_shape=(4,), latent_dim=2, posterior=3)


def test_head_instances_are_accepted_and_must_match_the_model():
    model = VAE(input_shape=(4,), latent_dim=2, prior=heads.MixtureOfGaussians(latent_dim=2, num_components=3))
    assert isinstance(model.prior, tfd.MixtureSameFamily)
    assert model.prior.mixture_distribution.logits.shape == (3,)
    with pytest.raises(ValueError, match=r"prior: the head gives distributions with event shape \(5,\), but the model's latent_dim is 2"):
        VAE(input_shape=(4,), latent_dim=2, prior=heads.StandardNormal(latent_dim=5))


def test_full_covariance_forms_without_matrix_diagonal_or_solve_equal_tfps(digits):
    """The forms TFLite can run (and the only ones tfvae uses) equal TFP's MatrixDiagPart/solve ones."""
    model = VAE(input_shape=(64,), latent_dim=4, posterior="full")
    head = model.posterior_head
    q = model.encode(digits[1][:7])
    eps = tf.random.stateless_normal((3, 7, 4), seed=(1, 2))
    z = head.reparameterize(q, eps)
    np.testing.assert_allclose(head.stddev(q), q.stddev(), rtol=1e-6)
    np.testing.assert_allclose(head.log_prob(q, z, eps), q.log_prob(z), rtol=1e-5, atol=1e-4)
    reference = tfd.MultivariateNormalDiag(tf.zeros(4), tf.ones(4))  # TFP's own MVN-MVN KL
    np.testing.assert_allclose(tfd.kl_divergence(q, model.prior), tfd.kl_divergence(q, reference), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("event_shape", [(4, 3, 1), ()])  # 12 elements padded to one group of 16; scalar events
def test_bernoulli_log_likelihood_hook_is_tfps_log_prob(event_shape):
    # The head's fast sum (x * l - softplus(l) over the event) against TFP's Bernoulli, for logits
    # [K, B, *event_shape], grey and binary x broadcast over K, and logits far in both tails.
    head = heads.Bernoulli(event_shape=event_shape)
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(scale=8.0, size=(5, 2, *event_shape)), tf.float32)
    x = np.concatenate([rng.uniform(size=(1, *event_shape)), rng.uniform(size=(1, *event_shape)) < 0.5])
    x = tf.constant(x, tf.float32)
    p = head.distribution(logits)
    expected = tfd.Independent(tfd.Bernoulli(logits=logits), len(event_shape)).log_prob(x)
    fast = heads.log_likelihood(head, p, x)
    assert fast.shape == (5, 2)
    np.testing.assert_allclose(fast, expected, rtol=1e-6, atol=1e-4)
    with heads.fused_sums():  # the XLA-compiled sum that evaluation traces
        fused = heads.log_likelihood(head, p, x)
    np.testing.assert_allclose(fused, expected, rtol=1e-6, atol=1e-4)
    # The other way round: K x B values of x broadcast against one [B] set of logits.
    xs = tf.constant(rng.uniform(size=(5, 2, *event_shape)) < 0.5, tf.float32)
    expected = tfd.Independent(tfd.Bernoulli(logits=logits[0]), len(event_shape)).log_prob(xs)
    with heads.fused_sums():
        fused = heads.log_likelihood(head, head.distribution(logits[0]), xs)
    assert fused.shape == (5, 2)
    np.testing.assert_allclose(fused, expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("event_shape", [(784,), (3, 263)])  # 49 groups of 16; 789 elements padded to 50 groups
def test_fused_bernoulli_sum_is_exact_to_float32_rounding_on_image_sized_events(event_shape):
    # 784-789 logits per image, from N(0, 6^2) with tails to |l| = 100, where 1 + exp(-|l|) rounds to 1.
    rng = np.random.default_rng(1)
    size = math.prod(event_shape)
    logits = rng.normal(scale=6.0, size=(400, size))
    logits[:, :10] = [-100, -40, -20, -17, -16, 16, 17, 20, 40, 100]
    x = (rng.uniform(size=(400, size)) < 0.3).astype(np.float64)
    exact = np.sum(x * logits - np.logaddexp(0.0, logits), axis=-1)
    head = heads.Bernoulli(event_shape=event_shape)
    p = head.distribution(tf.constant(logits.reshape(400, *event_shape), tf.float32))
    x = tf.constant(x.reshape(400, *event_shape), tf.float32)
    with heads.fused_sums():
        error = heads.log_likelihood(head, p, x).numpy() - exact
    plain = heads.log_likelihood(head, p, x).numpy() - exact
    # Both are float32 sums of ~800 terms of size ~5 (rounding ~1e-4 each way). Over 400 images the
    # rounding averages out: the mean error is float32's (1e-5 here; XLA's own softplus gave 2e-5).
    assert np.abs(error).max() < 1e-3 and np.abs(plain).max() < 1e-3
    assert abs(error.mean()) < 3e-5 and abs(plain.mean()) < 3e-5


def _xla_compiled_functions(concrete):
    """Names of the functions in a traced graph's library that XLA must compile."""
    library = concrete.graph.as_graph_def().library.function
    return [f.signature.name for f in library if f.attr["_XlaMustCompile"].b]


def test_evaluation_fuses_the_bernoulli_sum_and_training_and_export_do_not(tmp_path):
    model = VAE(input_shape=(6,), latent_dim=2)
    x = tf.constant(np.random.default_rng(0).uniform(size=(3, 6)), tf.float32)
    model.log_prob(x, 4)  # traces the evaluation graph inside fused_sums
    evaluation = model._importance_sampled.get_concrete_function(x, tf.constant(4))
    assert len(_xla_compiled_functions(evaluation)) == 1

    export = signatures.Signatures(model, log_prob_samples=4).functions["log_prob"]
    assert _xla_compiled_functions(export.get_concrete_function()) == []
    training = tf.function(lambda x: model.bound(x, 1, "elbo", 1.0)["bound"])
    assert _xla_compiled_functions(training.get_concrete_function(x)) == []
