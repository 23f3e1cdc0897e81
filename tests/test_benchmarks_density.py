"""Smoke tests of benchmarks/density.py: tiny runs through the real command line (one killed and resumed),
the Exemplar VAE setup's model, early stopping, and the argument checks."""

import functools
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import benchmark_scripts

SCRIPT = benchmark_scripts.path("density.py")
load_script = functools.partial(benchmark_scripts.load, "density.py")


@pytest.mark.slow
def test_tiny_run_prints_the_json_fields(tmp_path):
    output = tmp_path / "density.json"
    flags = [
        "--dataset", "digits", "--epochs", "1", "--latent-dim", "4", "--train-examples", "200",
        "--test-examples", "20", "--eval-samples", "10", "--infer-steps", "3", "--gap-examples", "10",
        "--gap-elbo-samples", "5", "--steps-per-execution", "1", "--verbose", "0", "--output", str(output),
        "--run-dir", str(tmp_path / "run"),
    ]
    completed = benchmark_scripts.run("density.py", *flags)
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
    # The Burda setup holds nothing out: no validation, no early stopping.
    assert (result["validation_examples"], result["best_epoch"], result["epochs_run"]) == (0, None, 1)
    assert result["command"] == "python benchmarks/density.py " + " ".join(flags)
    assert (tmp_path / "run" / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--epochs", "0"], "--epochs: expected an integer >= 1; got 0"),
        (["--eval-samples", "0"], "--eval-samples"),
        (["--infer-steps", "-1"], "--infer-steps: expected an integer >= 0; got -1"),
        (["--test-examples", "0"], "--test-examples"),
        (["--learning-rate", "0"], "--learning-rate"),
        (["--objective", "nope"], "--objective"),
        (["--setup", "nope"], "--setup: invalid choice: 'nope'"),
        (["--prior", "mixture"], "--prior: invalid choice: 'mixture'"),
        (["--lr-schedule", "step"], "--lr-schedule: invalid choice: 'step'"),
        (["--setup", "exemplar-vae", "--patience", "0"], "--patience: expected an integer >= 1; got 0"),
        (["--warmup-epochs", "-1"], "--warmup-epochs: expected an integer >= 0; got -1"),
        (["--validation-examples", "-5"], "--validation-examples: expected an integer >= 0; got -5"),
        (["--lr-schedule", "plateau"], "--lr-schedule plateau: needs validation data"),
        (["--patience", "5"], "--patience: needs validation data"),
        (["--validation-examples", "100"], "--patience: needed with validation data"),
        (["--posterior-log-variance-range", "2", "-6"], "--posterior-log-variance-range: expected finite LOW < HIGH; "
                                                        "got 2 -6"),
        (["--posterior-log-variance-range", "nan", "2"], "--posterior-log-variance-range: expected finite LOW < HIGH"),
    ],
)
def test_bad_flags_are_clear_errors(flags, match, capsys):
    with pytest.raises(SystemExit) as info:
        load_script().parse_args(flags)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert match in err
    assert err.startswith("density.py: error: ") and err.count("\n") == 1


def test_exemplar_vae_setup_builds_the_papers_model():
    script = load_script()
    args = script.parse_args(["--setup", "exemplar-vae", "--prior", "vamp"])
    assert (args.dataset, args.epochs, args.patience, args.warmup_epochs) == ("fashion_mnist", 2000, 50, 100)
    assert (args.batch_size, args.validation_examples) == (100, 10000)
    assert (args.lr_schedule, args.bias_init) == ("constant", True)

    x_train = np.full((10, 784), 0.25, np.float32)
    model = script.new_model(args, x_train)
    for body in (model.encoder, model.decoder):
        assert type(body).__name__ == "GatedMLP" and body.units == [300, 300]
    assert model.latent_dim == 40 and model.event_shape == (784,)
    assert type(model.prior_head).__name__ == "VampPrior" and model.prior_head.num_components == 500
    assert type(model.likelihood_head).__name__ == "Bernoulli"
    assert float(model.optimizer.learning_rate) == pytest.approx(5e-4)
    np.testing.assert_allclose(model.likelihood_head.dense.bias.numpy(), math.log(0.25 / 0.75), rtol=1e-6)

    plain = script.new_model(script.parse_args(["--setup", "exemplar-vae", "--no-bias-init"]), x_train)
    assert type(plain.prior_head).__name__ == "StandardNormal"
    np.testing.assert_array_equal(plain.likelihood_head.dense.bias.numpy(), 0.0)


def test_a_latent_dim_list_builds_the_two_level_hvae_with_the_log_variance_range_on_every_layer():
    script = load_script()
    args = script.parse_args(["--setup", "exemplar-vae", "--prior", "vamp", "--latent-dim", "40,40",
                              "--posterior-log-variance-range", "-6", "2"])
    assert args.latent_dim == [40, 40]
    model = script.new_model(args, np.full((10, 784), 0.25, np.float32))
    assert model.latent_dims == (40, 40) and model.latent_dim == 80
    posterior, prior = model.posterior_head, model.prior_head
    gaussians = [posterior.first_head, *posterior.layer_heads, *prior.layer_heads]
    assert all(head.log_variance_range == [-6.0, 2.0] for head in gaussians)
    assert all(type(b).__name__ == "GatedMLP" and b.units == [300, 300] for b in posterior.bodies + prior.bodies)
    assert type(prior.top_head).__name__ == "VampPrior" and prior.top_head.num_components == 500
    assert script.latent_name(args.latent_dim) == "(40,40)"

    ladder = script.parse_args(["--setup", "exemplar-vae", "--latent-dim", "40,40", "--inference", "ladder"])
    model = script.new_model(ladder, np.full((10, 784), 0.25, np.float32))
    assert model.posterior_head.direction == "ladder" and model.posterior_head.estimate_sizes == [80]
    assert script.default_run_dir(ladder).endswith("-ladder-seed0")


@pytest.mark.parametrize("text", ["0", "40,0", "40,", "a"])
def test_a_bad_latent_dim_is_a_clear_error(text, capsys):
    with pytest.raises(SystemExit):
        load_script().parse_args(["--latent-dim", text])
    assert "argument --latent-dim: expected D or D1,D2,... (integers >= 1)" in capsys.readouterr().err


def test_the_authors_initialization_and_posterior_scale_are_levers():
    script = load_script()
    args = script.parse_args(["--setup", "exemplar-vae", "--he-init", "--posterior-log-variance-range", "-6", "2"])
    model = script.new_model(args, np.full((10, 784), 0.25, np.float32))
    assert model.posterior_head.log_variance_range == [-6.0, 2.0]
    kernels = [w for w in model.weights if w.path.endswith("kernel")]
    # Encoder 2 gated layers, decoder 2, and the two heads: each kernel ~ N(0, 2 / fan_in).
    assert len(kernels) == 6
    for kernel in kernels:
        values = kernel.numpy()
        expected = math.sqrt(2.0 / values.shape[0])
        # The sample std of n >= 24,000 normal draws is within 1% of sigma (about 5 standard errors).
        assert values.std() == pytest.approx(expected, rel=0.01) and abs(values.mean()) < 5 * expected / values.size**0.5
    # The output bias is still set to the pixels' logit after the kernels are drawn.
    np.testing.assert_allclose(model.likelihood_head.dense.bias.numpy(), math.log(0.25 / 0.75), rtol=1e-6)
    assert "-he-logvar-6,2-seed0" in script.default_run_dir(args)


def stopping_epoch(script, values, patience, warmup_epochs):
    """The 0-based epoch after which `Patience` stops on `values`, or None."""
    rule = script.Patience(patience, warmup_epochs)
    for epoch, value in enumerate(values):
        rule.update(epoch, value)
        if rule.stop:
            return epoch
    return None


def test_patience_stops_after_that_many_epochs_past_the_warmup_without_improvement():
    script = load_script()
    values = [-300, -250, -240, -245, -241, -239, -239.5, -250, -260, -270]
    # Best at epoch 5; epochs 6, 7, 8 do not improve: patience 3 stops after epoch 8.
    assert stopping_epoch(script, values, patience=3, warmup_epochs=0) == 8
    # Epochs 3 and 4 do not improve: both count without a warm-up; with one of 5 epochs (beta = 1 from
    # epoch 4, 0-based) only epoch 4 does, and epoch 5 is the second.
    assert stopping_epoch(script, values[:5] + [-300] * 5, patience=2, warmup_epochs=0) == 4
    assert stopping_epoch(script, values[:5] + [-300] * 5, patience=2, warmup_epochs=5) == 5
    assert stopping_epoch(script, [-1.0, math.nan, math.nan], patience=2, warmup_epochs=0) == 2
    assert stopping_epoch(script, values, patience=5, warmup_epochs=0) is None


TINY_EXEMPLAR = [
    "--setup", "exemplar-vae", "--dataset", "digits", "--latent-dim", "4", "--train-examples", "300",
    "--validation-examples", "100", "--test-examples", "20", "--eval-samples", "10", "--infer-steps", "2",
    "--gap-examples", "10", "--gap-elbo-samples", "5", "--steps-per-execution", "1", "--verbose", "0",
]


def run_script(flags, timeout=300):
    completed = benchmark_scripts.run("density.py", *flags, timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout)


def read_state(run_dir):
    with open(os.path.join(run_dir, "state.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.slow  # the default suite must stay under 10 minutes on 2 cores
def test_tiny_run_stops_early_where_its_validation_history_says(tmp_path):
    flags = [*TINY_EXEMPLAR, "--epochs", "12", "--warmup-epochs", "2", "--patience", "1", "--learning-rate", "3e-2",
             "--run-dir", str(tmp_path)]
    result = run_script(flags)
    history = read_state(tmp_path)["history"]

    script = load_script()
    expected = stopping_epoch(script, history["val_elbo"], patience=1, warmup_epochs=2)
    assert result["epochs_run"] == (12 if expected is None else expected + 1) == len(history["val_elbo"])
    assert result["stopped_early"] == (expected is not None)
    assert result["best_epoch"] == int(np.argmax(history["val_elbo"])) + 1
    assert result["best_val_elbo"] == max(history["val_elbo"])
    np.testing.assert_allclose(history["beta"], [min(1.0, (e + 1) / 2) for e in range(result["epochs_run"])])


@pytest.mark.slow  # ~30 s: a real SIGKILL and two runs; test_a_longer_budget_continues_a_constant_rate_run resumes by default
def test_a_killed_run_resumes_with_one_history_row_per_epoch(tmp_path):
    epochs = 12
    # Patience beyond the budget: both runs train every epoch, whatever their draws.
    flags = [*TINY_EXEMPLAR, "--epochs", str(epochs), "--warmup-epochs", "4", "--patience", str(epochs)]
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, SCRIPT, *flags, "--run-dir", str(killed_dir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (killed_dir / "state.json").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # polls for the first epoch's checkpoint: there is no event to wait on
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    done = read_state(killed_dir)["epochs_done"]
    assert 1 <= done < epochs, "the kill came after the run had finished: nothing was resumed"

    resumed = run_script([*flags, "--run-dir", str(killed_dir)])
    script = load_script()  # in this process: the TensorFlow import is paid once
    uninterrupted = script.main([*flags, "--run-dir", str(tmp_path / "whole")])

    history = read_state(killed_dir)["history"]
    assert resumed["epochs_run"] == uninterrupted["epochs_run"] == epochs
    assert {len(column) for column in history.values()} == {epochs}
    assert resumed["training_sessions"] == 2 and uninterrupted["training_sessions"] == 1
    # The warm-up goes on where the kill left it.
    np.testing.assert_allclose(history["beta"], [min(1.0, (e + 1) / 4) for e in range(epochs)])
    # One checkpoint and one set of best weights are kept, no leftovers of the killed writes.
    assert sorted(p.suffix for p in killed_dir.iterdir() if p.name.startswith(("checkpoint-", "best-", ".tmp"))) == [
        ".keras", ".npz"]

    # Once finished, the same command trains no more: it evaluates the kept model again.
    again = script.main([*flags, "--run-dir", str(killed_dir)])
    assert (again["epochs_run"], again["training_sessions"]) == (epochs, 2)
    assert again["best_val_elbo"] == resumed["best_val_elbo"]


@pytest.mark.parametrize(
    "flags, stored, flag",
    [
        ([], {"prior": "vamp"}, "--prior"),
        ([], {"bias_init": False}, "--no-bias-init"),
        ([], {"he_init": True}, "--he-init"),
        ([], {"architecture": "conv"}, "--architecture"),
        ([], {"inference": "ladder"}, "--inference"),
        (["--posterior-log-variance-range", "-6", "2"], {"posterior_log_variance_range": None},
         "--posterior-log-variance-range"),
        # The cosine schedule's decay length is the epoch budget it was built with.
        (["--lr-schedule", "cosine"], {"epochs": 5}, "--epochs"),
    ],
)
def test_resuming_with_other_settings_names_the_flag(tmp_path, capsys, flags, stored, flag):
    script = load_script()
    flags = [*TINY_EXEMPLAR, "--epochs", "2", "--run-dir", str(tmp_path), *flags]
    args = script.parse_args(flags)
    settings = {name: getattr(args, name) for name in (*script.RUN_SETTINGS, "epochs")}
    script.write_state(str(tmp_path), script.new_state({**settings, **stored}))
    with pytest.raises(SystemExit) as info:
        script.main(flags)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"density.py: error: {flag}: the run in ") and err.count("\n") == 1


def test_a_run_started_before_the_newer_settings_resumes_with_their_defaults(tmp_path):
    script = load_script()
    flags = [*TINY_EXEMPLAR, "--epochs", "1", "--run-dir", str(tmp_path)]
    args = script.parse_args(flags)
    older = {name: getattr(args, name) for name in (*script.RUN_SETTINGS, "epochs")
             if name not in script.SETTING_DEFAULTS}
    script.check_settings(str(tmp_path), older, {**older, **script.SETTING_DEFAULTS})
    with pytest.raises(script.UsageError, match=r"^--he-init: the run in .* was started with False"):
        script.check_settings(str(tmp_path), older, {**older, **script.SETTING_DEFAULTS, "he_init": True})


@pytest.mark.slow
def test_a_longer_budget_continues_a_constant_rate_run(tmp_path):
    script = load_script()
    flags = [*TINY_EXEMPLAR, "--run-dir", str(tmp_path), "--warmup-epochs", "1", "--patience", "5"]
    first = script.main([*flags, "--epochs", "1"])
    assert first["epochs_run"] == 1
    start = time.perf_counter()
    longer = script.main([*flags, "--epochs", "2"])
    session = time.perf_counter() - start
    assert (longer["epochs_run"], longer["training_sessions"]) == (2, 2)
    # Wall time: the earlier session's training plus this whole session, each counted once.
    assert longer["train_seconds"] < longer["wall_seconds"] <= first["train_seconds"] + session
    assert len(read_state(tmp_path)["history"]["elbo"]) == 2


def test_too_many_validation_examples_names_the_flag(tmp_path, capsys):
    script = load_script()
    with pytest.raises(SystemExit) as info:
        script.main([*TINY_EXEMPLAR, "--validation-examples", "1500", "--run-dir", str(tmp_path)])
    assert info.value.code == 2
    assert "--validation-examples: expected fewer than the 1500 training images of --dataset digits; got 1500" in (
        capsys.readouterr().err)


def test_unknown_dataset_lists_the_valid_ones():
    script = load_script()
    with pytest.raises(ValueError, match="name_or_path: expected one of digits, mnist-5k, fashion_mnist, mnist"):
        script.run(script.parse_args(["--dataset", "nope", "--epochs", "1"]))


def test_the_conv_architecture_trains_a_hierarchy_on_the_images_and_reports_it(tmp_path):
    script = load_script()
    flags = [*TINY_EXEMPLAR, "--architecture", "conv", "--latent-dim", "4,2", "--prior", "vamp", "--epochs", "1",
             "--warmup-epochs", "1", "--run-dir", str(tmp_path)]
    args = script.parse_args(flags)
    x_train, x_validation, x_test = script.split(args)
    assert (x_train.shape, x_validation.shape, x_test.shape) == ((300, 8, 8, 1), (100, 8, 8, 1), (20, 8, 8, 1))
    model = script.new_model(args, x_train)
    assert (type(model.encoder).__name__, type(model.decoder).__name__) == ("ConvEncoder", "ConvDecoder")
    assert model.event_shape == (8, 8, 1) and model.latent_dims == (4, 2)
    assert all(type(b).__name__ == "GatedMLP" for b in model.posterior_head.bodies + model.prior_head.bodies)
    # The per-pixel head shares one bias over the positions: the logit of the mean training pixel.
    mean = x_train.mean()
    np.testing.assert_allclose(model.likelihood_head.dense.bias.numpy(), [math.log(mean / (1 - mean))], rtol=1e-5)

    result = script.main(flags)
    assert result["architecture"] == "8x8x1 conv-(4,2)-conv (layers between z: 300-300 gated), Bernoulli"
    assert (result["stochastic_layers"], result["epochs_run"], result["test_examples"]) == (2, 1, 20)
    assert result["test_elbo"] <= -result["test_nll"] + 1.0 and len(result["test_kl_layers"]) == 2
    assert "exemplar-vae-conv-digits-vamp" in script.default_run_dir(args)


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path):
    script = load_script()
    flags = [*TINY_EXEMPLAR, "--epochs", "2", "--run-dir", str(tmp_path)]
    args = script.parse_args(flags)
    state = script.new_state({name: getattr(args, name) for name in (*script.RUN_SETTINGS, "epochs")})
    state.update(epochs_done=1, checkpoint="checkpoint-00001.keras")
    (tmp_path / "checkpoint-00001.keras").write_bytes(b"not a zip file")
    script.write_state(str(tmp_path), state)
    with pytest.raises(ValueError, match="checkpoint-00001.keras: cannot load the checkpoint"):
        script.main(flags)
