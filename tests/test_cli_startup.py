"""The `tfvae` command starts without TensorFlow and speaks without TensorFlow's start-up logs.

`--help`, `--version` and usage errors must not import TensorFlow (timed in benchmarks/throughput.py,
not here); `import tfvae` must not either, while its public names and Keras's registry of tfvae's
classes work as when it imported everything. Every command runs in a real subprocess with the
environment of a user who has not set TF_CPP_MIN_LOG_LEVEL.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import DIGITS_RUN_LATENT_DIM, USER_ENV
from tfvae.cli import _parser

# What TensorFlow writes at start-up and in its converter, none of which a user of the command needs.
TENSORFLOW_LOGS = ("oneDNN", "cuda", "cpu_feature_guard", "absl", "I0000", "W0000", "E0000",
                   "This TensorFlow binary is optimized", "To enable the following instructions", "XNNPACK")


def tfvae_command(*args):
    """`python -m tfvae ARGS`: the installed console script may belong to another checkout."""
    return [sys.executable, "-m", "tfvae", *map(str, args)]


def python(code):
    return [sys.executable, "-c", code]


def run_all(commands, cwd, timeout=600):
    """Runs {name: argv} side by side and returns {name: CompletedProcess}."""
    processes = {name: subprocess.Popen(argv, cwd=cwd, env=USER_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True) for name, argv in commands.items()}
    results = {}
    for name, process in processes.items():
        out, err = process.communicate(timeout=timeout)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return results


def tensorflow_logs(result):
    return [line for line in (result.stdout + result.stderr).splitlines() if any(s in line for s in TENSORFLOW_LOGS)]


@pytest.mark.parametrize(
    "args, status",
    [(["--help"], 0), (["sample", "--help"], 0), (["--version"], 0), (["train", "--epochs", "0"], 2),
     (["sample"], 2), (["no-such-command"], 2)],
)
def test_help_version_and_usage_errors_do_not_import_tensorflow(args, status, tmp_path):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "tfvae", *args], cwd=tmp_path, env=USER_ENV,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == status
    timings = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    imported = [line.rsplit("|", 1)[-1].strip() for line in timings]
    assert "tfvae.cli" in imported
    assert not [m for m in imported if m.split(".")[0] in ("tensorflow", "keras", "tensorflow_probability", "numpy")]
    messages = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    if status == 2:
        assert len(messages) == 1 and re.match(r"tfvae( [a-z-]+)?: error: ", messages[0])
    else:
        assert messages == [] and result.stdout.startswith(("usage: tfvae", "tfvae "))


@pytest.mark.parametrize(
    "args, message",
    [(["evaluate", "no-such-run"], "no-such-run: no such run directory."),
     (["sample", "empty"], "empty: no model.keras in this run directory; train one with tfvae train --out empty."),
     (["encode", "empty", "--input", "x.npy", "-o", "z.npy"], "empty: no model.keras"),
     (["train", "--dataset", "mnits"], "--dataset: expected one of digits, mnist-5k, fashion_mnist, mnist, a folder of images"),
     (["train", "--dataset", "missing.npz"], "--dataset: no such file or folder 'missing.npz'."),
     (["train", "--resume", "--out", "no-such-run"], "no-such-run: no such run directory."),
     (["train", "--out", ""], "--out: expected a run directory; got ''."),
     (["train", "--kl-schedule", "cyclical:period=0", "--out", "run"],
      "--kl-schedule: cyclical:period=0: period: expected an integer >= 1; got 0."),
     (["train", "--kl-schedule", "warmup:steps=5"],
      "--kl-schedule: expected NAME or NAME:ARG=VALUE,... with NAME one of linear, cyclical, free_bits, capacity;")],
)
def test_a_mistyped_run_dataset_input_or_schedule_is_refused_before_tensorflow_is_imported(args, message, tmp_path):
    # The mistakes users make most, answered in a fraction of a second instead of after TensorFlow's 5-10 s.
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "tfvae", *args], cwd=tmp_path, env=USER_ENV,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert "tfvae.cli.early" in imported
    assert not [m for m in imported if m.split(".")[0] in ("tensorflow", "keras", "tensorflow_probability")]
    messages = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert len(messages) == 1 and messages[0].startswith(f"tfvae: error: {message}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # nothing written


def test_the_sources_bundled_names_are_the_datasets_tfvae_data_loads():
    from tfvae import data, sources

    assert sources.BUNDLED == data.DATASETS


def test_verbose_is_accepted_before_and_after_the_command():
    parse = _parser().parse_args
    assert parse(["sample", "RUN"]).verbose is False
    assert parse(["--verbose", "sample", "RUN"]).verbose is True
    assert parse(["sample", "RUN", "--verbose"]).verbose is True
    assert parse(["-v", "train"]).verbose is True and parse(["train", "-v"]).verbose is True


# Keras finds a saved model's classes by their registered names (tfvae>VAE, tfvae>MLP, ...), registered
# when tfvae.model is imported: a bare `import tfvae` must still be enough, whoever imports Keras later.
LOAD = """
import json, sys
{imports}
import keras
model = keras.models.load_model(sys.argv[1], compile=False)
print(type(model).__module__, type(model).__name__, model.latent_dim)
"""

NAMES = """
import json, sys
import tfvae
lazy = "tensorflow" not in sys.modules and "keras" not in sys.modules
""" + LOAD.format(imports="") + """
from tfvae import VAE, data
missing = None
try:
    tfvae.no_such_name
except AttributeError as e:
    missing = str(e)
print(json.dumps({
    "lazy": lazy,
    "all": all(getattr(tfvae, name) is not None for name in tfvae.__all__),
    "dir": sorted(set(tfvae.__all__) - set(dir(tfvae))),
    "same": VAE is tfvae.model.VAE and data is tfvae.data and callable(data.make_dataset),
    "missing": missing,
}))
"""


@pytest.fixture(scope="module")
def results(digits_run, tmp_path_factory):
    """The session's small run, trained by the command (its output checked below), and commands that read it."""
    run, train = digits_run
    model = run / "model.keras"
    results = run_all(
        {
            "verbose sample": tfvae_command("--verbose", "sample", run, "-n", 1, "-o", "verbose.png"),
            "import tfvae": [*python(NAMES), model],
            "import tfvae.data": [*python(LOAD.format(imports="import tfvae.data")), model],
        },
        cwd=tmp_path_factory.mktemp("startup"),
    )
    return {"train": train, **results}


@pytest.mark.slow
def test_train_prints_no_tensorflow_logs(results):
    # `score`, `evaluate` and `export` are checked on test_cli's commands, which run in a user's environment too.
    result = results["train"]
    assert result.returncode == 0, result.stderr
    assert tensorflow_logs(result) == []
    assert result.stderr == ""  # no Python warnings either: Keras's progress bar and tfvae's lines are on stdout
    assert result.stdout.strip()


def test_train_keeps_the_progress_bar_and_its_own_lines(results):
    out = results["train"].stdout
    assert out.startswith("Training runs/digits: digits")
    assert "15/15" in out and "elbo" in out  # 1,500 images in batches of 100
    assert "Epoch 2: test ELBO" in out  # the summary of the last of its 2 epochs


def test_verbose_lets_tensorflow_logs_through(results):
    result = results["verbose sample"]
    assert result.returncode == 0, result.stderr
    assert tensorflow_logs(result)
    assert result.stdout.startswith("Wrote 1 samples")


def test_import_tfvae_is_lazy_and_its_names_work(results):
    result = results["import tfvae"]
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {
        "lazy": True, "all": True, "dir": [], "same": True,
        "missing": "module 'tfvae' has no attribute 'no_such_name'",
    }


@pytest.mark.parametrize("name", ["import tfvae", "import tfvae.data"])
def test_keras_loads_a_saved_model_after_a_bare_import(results, name):
    """`import tfvae` (or a submodule that imports TensorFlow first), then keras.models.load_model."""
    result = results[name]
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0].split() == ["tfvae.model", "VAE", str(DIGITS_RUN_LATENT_DIM)]


BENCHMARK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "throughput.py")


@pytest.mark.slow  # a trained run and a TensorFlow import per command; `--quick` in test_benchmarks runs it too
def test_throughput_benchmark_times_the_command_start_up():
    result = subprocess.run([sys.executable, BENCHMARK, "--cli-startup-only", "--cli-startup-runs", "2"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    result = json.loads(result.stdout)
    commands = result["cli_startup"]["commands"]
    assert [row["command"] for row in commands.values()] == [
        "tfvae --help", "tfvae train --epochs 0", "tfvae sample RNU -n 1 -o sample.png",
        "tfvae sample RUN -n 1 -o sample.png --seed 0"]
    for row in commands.values():
        assert len(row["runs"]) == 2 and 0 < row["seconds_min"] <= row["seconds_median"] <= row["seconds_max"]
    assert commands["help"]["stdout_lines"] > 10 and commands["help"]["stderr_lines"] == 0
    for name in ("argument_error", "mistyped_run"):
        assert commands[name]["stdout_lines"] == 0 and commands[name]["stderr_lines"] == 1
    assert commands["sample"]["stdout_lines"] == 1 and commands["sample"]["stderr_lines"] == 0
    assert set(result["targets"]) == {"cli_help_seconds", "cli_argument_error_seconds", "cli_mistyped_run_seconds"}
    assert "training" not in result


@pytest.mark.parametrize("args, named", [(["--cli-startup-runs", "0"], "--cli-startup-runs"),
                                         (["--cli-startup-only", "--no-cli-startup"], "--cli-startup-only")])
def test_throughput_benchmark_refuses_bad_start_up_arguments(args, named):
    result = subprocess.run([sys.executable, BENCHMARK, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert named in result.stderr
