"""Smoke test of benchmarks/density.py: a tiny run through the real command line, and its argument checks."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "density.py")


def load_script():
    spec = importlib.util.spec_from_file_location("density_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_prints_the_json_fields(tmp_path):
    output = tmp_path / "density.json"
    flags = [
        "--dataset", "digits", "--epochs", "1", "--latent-dim", "4", "--train-examples", "200",
        "--test-examples", "20", "--eval-samples", "10", "--infer-steps", "3", "--gap-examples", "10",
        "--gap-elbo-samples", "5", "--steps-per-execution", "1", "--verbose", "0", "--output", str(output),
    ]
    completed = subprocess.run(
        [sys.executable, SCRIPT, *flags], capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout)

    assert result == json.loads(output.read_text())
    assert result["architecture"] == "64-200-200-4 tanh, Bernoulli"
    assert (result["train_examples"], result["test_examples"], result["eval_num_samples"]) == (200, 20, 10)
    assert result["test_nll"] > 0 and result["test_nll_stderr"] > 0
    assert result["test_elbo"] <= -result["test_nll"] + 1.0
    assert result["test_elbo"] == pytest.approx(result["test_reconstruction"] - result["test_kl"])
    assert 0 <= result["active_units"] <= 4
    assert set(result["amortization"]) >= {"amortized_elbo", "refined_elbo", "gap_closed", "gap_closed_stderr"}
    for key in ("train_seconds", "eval_seconds", "wall_seconds", "train_examples_per_second"):
        assert result[key] > 0


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--epochs", "0"], "--epochs: expected an integer >= 1; got 0"),
        (["--eval-samples", "0"], "--eval-samples"),
        (["--infer-steps", "-1"], "--infer-steps: expected an integer >= 0; got -1"),
        (["--test-examples", "0"], "--test-examples"),
        (["--learning-rate", "0"], "--learning-rate"),
        (["--objective", "nope"], "--objective"),
    ],
)
def test_bad_flags_are_clear_errors(flags, match, capsys):
    with pytest.raises(SystemExit) as info:
        load_script().parse_args(flags)
    assert info.value.code == 2
    assert match in capsys.readouterr().err


def test_unknown_dataset_lists_the_valid_ones():
    script = load_script()
    with pytest.raises(ValueError, match="name_or_path: expected one of digits, mnist-5k, fashion_mnist, mnist"):
        script.run(script.parse_args(["--dataset", "nope", "--epochs", "1"]))
