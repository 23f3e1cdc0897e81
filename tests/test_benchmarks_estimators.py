"""benchmarks/estimators.py: its refusal and one method's entry, in-process (the full runs take minutes)."""

import numpy as np
import pytest

import tfvae
from benchmark_scripts import load
from quadrature import exact_log_prob


def test_the_fashion_setup_needs_a_model(capsys):
    with pytest.raises(SystemExit) as exit:
        load("estimators.py").main(["--setup", "fashion"])
    assert exit.value.code == 2
    assert "--model: expected a .keras model for --setup fashion; got none" in capsys.readouterr().err


def test_an_entry_holds_the_estimates_figures_against_quadrature(digits):
    model = tfvae.VAE(input_shape=(64,), latent_dim=2, seed=0)
    model.fit(digits[0][:300], epochs=2, batch_size=50, verbose=0)
    x = digits[1][:12]
    exact = exact_log_prob(model, x)
    entry = load("estimators.py")._measure(model, x, exact, 5, {"num_samples": 200})
    estimates = [tfvae.evaluate.log_prob_estimate(model, x[i : i + 5], 200, seed=i) for i in range(0, 12, 5)]
    log_prob = np.concatenate([e.log_prob for e in estimates])
    assert entry["num_samples"] == 200 and entry["log_prob"] == pytest.approx(log_prob.mean())
    assert entry["error_mean_abs"] == pytest.approx(np.abs(log_prob - exact).mean())
    assert 1.0 <= entry["ess_min"] <= entry["ess_median"] <= 200 and 0.0 <= entry["unreliable_fraction"] <= 1.0
    assert entry["seconds_per_example"] > 0
