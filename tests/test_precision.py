"""The bfloat16 option of importance-sampled evaluation (tfvae.precision, issue 16)."""

import numpy as np
import pytest

import tfvae


def _trained(digits, body, input_shape=(64,)):
    x_train, _ = digits
    model = tfvae.VAE(input_shape=input_shape, latent_dim=4, encoder=body, decoder=body, seed=0)
    model.fit(x_train.reshape(-1, *input_shape), epochs=2, batch_size=100, verbose=0)
    return model


def _on_the_same_noise(model, x, num_samples, precision):
    """log p(x) in `precision` drawn with the noise the model's seed generator gives now (then put back)."""
    state = model.seed_generator.state.numpy()
    log_p = model.log_prob(x, num_samples, precision=precision).numpy().astype(np.float64)
    model.seed_generator.state.assign(state)
    return log_p


# The conv case (11 s) runs with the slow tests: the MLP cases exercise the same bfloat16 path.
@pytest.mark.parametrize("body, input_shape", [
    ("mlp", (64,)), ("gated_mlp", (64,)), pytest.param("conv", (8, 8, 1), marks=pytest.mark.slow)])
def test_bfloat16_log_prob_is_within_five_hundredths_of_a_nat_of_float32(digits, body, input_shape):
    model = _trained(digits, body, input_shape)
    x = digits[1][:200].reshape(-1, *input_shape)
    float32 = _on_the_same_noise(model, x, 100, "float32")
    bfloat16 = _on_the_same_noise(model, x, 100, "bfloat16")
    # Rounding the decoder's products to 8 mantissa bits moves each log p(x) a little, not the mean.
    assert 0 < np.max(np.abs(bfloat16 - float32)) < 0.5
    assert abs(np.mean(bfloat16 - float32)) < 0.05
    # The float32 graph is not touched by the bfloat16 one, and every layer computes in float32 again.
    np.testing.assert_array_equal(_on_the_same_noise(model, x, 100, "float32"), float32)
    layers = [*model.decoder._flatten_layers(), *model.likelihood_head._flatten_layers()]
    assert {layer.dtype_policy.name for layer in layers} == {"float32"}


def test_evaluate_log_likelihood_takes_the_option(digits):
    model = _trained(digits, "mlp")
    x = digits[1][:200]
    state = model.seed_generator.state.numpy()
    float32 = tfvae.evaluate.log_likelihood(model, x, num_samples=50, verbose=0)
    model.seed_generator.state.assign(state)
    bfloat16 = tfvae.evaluate.log_likelihood(model, x, num_samples=50, verbose=0, precision="bfloat16")
    assert bfloat16["log_likelihood"] != float32["log_likelihood"]
    assert abs(bfloat16["log_likelihood"] - float32["log_likelihood"]) < 0.05
    assert abs(bfloat16["elbo"] - float32["elbo"]) < 0.05


@pytest.mark.parametrize("precision", ["float16", "bf16", None, 16])
def test_an_unknown_precision_is_refused_by_name(digits, precision):
    model = tfvae.VAE(input_shape=(64,), latent_dim=2)
    with pytest.raises(ValueError, match=r"^precision: expected one of 'float32', 'bfloat16'; got"):
        model.log_prob(digits[1][:2], 2, precision=precision)
    with pytest.raises(ValueError, match=r"^precision: expected one of 'float32', 'bfloat16'; got"):
        tfvae.evaluate.log_likelihood(model, digits[1][:2], 2, verbose=0, precision=precision)
