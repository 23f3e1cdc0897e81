"""The `tfvae` command end to end on scikit-learn's digits: the commands with the most TensorFlow behind them
(score, evaluate, export) in subprocesses, in a user's environment, and the others in-process, where no
TensorFlow start-up is paid again; the refusals (bad runs, inputs, flags) in-process, and a training run
killed with SIGKILL and resumed."""

import contextlib
import csv
import glob
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import DIGITS_RUN_LATENT_DIM as LATENT_DIM
from conftest import DIGITS_RUN_TRAIN
from conftest import USER_ENV
from test_cli_startup import tensorflow_logs
from tfvae import plots
from tfvae.cli import commands, main

TILE = 8 * plots.default_scale(8, 8) + 1  # a digit's tile in a grid, with its padding
# Lines TensorFlow's C++ start-up writes through absl before logging is configured, while
# `import tfvae` imports TensorFlow, before the command can keep them out (see tfvae.cli).
ABSL_START_UP = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "W0000 ")


ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def command(*args):
    """The installed `tfvae` console script (or `python -m tfvae` if it is not installed) with args."""
    script = os.path.join(os.path.dirname(sys.executable), "tfvae")
    return [*([script] if os.path.exists(script) else [sys.executable, "-m", "tfvae"]), *map(str, args)]


def tfvae(*args, cwd, timeout=300):
    return subprocess.run(command(*args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def run_together(commands, cwd, timeout=600, env=ENV):
    """Runs {name: argv}, as many at a time as there are CPUs, and returns {name: CompletedProcess}.

    Most of a command's time is importing TensorFlow, single-threaded: two imports share two cores."""
    waiting, running, results = list(commands.items()), {}, {}
    deadline = time.monotonic() + timeout
    while waiting or running:
        while waiting and len(running) < (os.cpu_count() or 1):
            name, argv = waiting.pop(0)
            out, err = (open(cwd / f".{name.replace(' ', '_')}.{stream}", "w+") for stream in ("out", "err"))
            running[name] = (argv, subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err), out, err)
        for name, (argv, process, out, err) in list(running.items()):
            if process.poll() is not None:
                out.seek(0), err.seek(0)
                results[name] = subprocess.CompletedProcess(argv, process.returncode, out.read(), err.read())
                out.close(), err.close()
                del running[name]
        assert time.monotonic() < deadline, f"still running after {timeout} s: {list(running)}"
        time.sleep(0.05)
    return results


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(ABSL_START_UP)]


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def run(digits_run):
    """The small trained run the session shares (conftest's `digits_run`); the tests here only read it."""
    path, train = digits_run
    assert "Traceback" not in train.stderr
    return path


@pytest.fixture(scope="module")
def inputs(workdir):
    """DATA in each form: .npy (8-bit), .npz with labels, and a folder of PNGs of other sizes."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.save(workdir / "digits.npy", (digits.images[:40] * 255 / 16).astype(np.uint8))
    np.savez(workdir / "digits.npz", x=digits.images[:30] / 16.0, y=digits.target[:30])
    folder = workdir / "pngs"
    folder.mkdir()
    for i in range(5):
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32)).save(folder / f"{i}.png")
    return workdir


@pytest.fixture(scope="module")
def results(run, inputs):
    """Each command that reads the run: those that start TensorFlow's heaviest parts in their own process, in
    a user's environment (TensorFlow's log level unset) with the warnings Python hides by default shown, e.g.
    TFP's DeprecationWarnings; the others in this one (TensorFlow's start-up logs, which only a fresh process
    prints, are the subprocesses' to show)."""
    results = run_together(
        {
            "score": command("score", run, "--input", "digits.npz", "-o", "scores.csv", "--num-samples", 20,
                             "--plot", "scores.png"),
            "evaluate": command("evaluate", run, "--num-samples", 10, "--json"),
            "export": command("export", run, "--out", "export/digits"),
            "python -m, missing run": [sys.executable, "-m", "tfvae", "sample", "no/such/run"],
        },
        cwd=inputs,
        env={**USER_ENV, "PYTHONWARNINGS": "default"},
    )
    for name, argv in {
        "sample": ("sample", run, "-n", 10, "-o", "out/samples.png", "--seed", 3),
        "reconstruct": ("reconstruct", run, "--input", "pngs", "-o", "recon.png"),
        "encode": ("encode", run, "--input", "digits.npy", "-o", "z.npy"),
        "plot-latent": ("plot-latent", run, "-o", "latent.png"),
    }.items():
        results[name] = in_process(argv, inputs)
    return results


def in_process(argv, cwd):
    """main(argv) run in this process in `cwd`, as a CompletedProcess with its stdout and stderr."""
    out, err, before = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main([str(a) for a in argv])
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(argv, status, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("name", ["sample", "reconstruct", "encode", "plot-latent"])
def test_commands_in_process_write_only_their_summary(results, name):
    result = results[name]
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout.strip()


@pytest.mark.parametrize("name", ["score", "evaluate", "export"])
def test_commands_print_no_tensorflow_logs_or_warnings(results, name):
    result = results[name]
    assert result.returncode == 0, result.stderr
    assert tensorflow_logs(result) == []
    assert result.stderr == ""  # Keras's progress bar and tfvae's lines are on stdout
    assert result.stdout.strip()


def snapshot(directory):
    return {
        path: hashlib.sha256(open(path, "rb").read()).hexdigest()
        for path in glob.glob(os.path.join(directory, "**"), recursive=True)
        if os.path.isfile(path)
    }


def test_train_writes_a_complete_run_directory(run):
    for name in ("model.keras", "config.json", "history.csv", "samples.png", "reconstructions.png"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == "digits" and config["latent_dim"] == LATENT_DIM and config["input_shape"] == [8, 8, 1]
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert {"loss", "elbo", "reconstruction", "kl", "val_elbo"} <= set(rows[0])
    assert png_size(run / "samples.png") == (8 * TILE + 1, 8 * TILE + 1)  # 64 samples
    assert png_size(run / "reconstructions.png") == (8 * TILE + 1, 8 * TILE + 1)  # 32 images, 32 reconstructions
    assert os.listdir(run / "checkpoints") == ["epoch-0002.keras"]
    for logs in ("train", "validation", "images"):
        assert any(name.startswith("events.out.tfevents") for name in os.listdir(run / "logs" / logs))
    assert not glob.glob(str(run / "**" / ".tmp-*"), recursive=True)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.keras", "config.json", "samples.png"):  # written via temporary files, made with 0600
        assert os.stat(run / name).st_mode & 0o777 == 0o666 & ~umask, name


def test_sample_writes_a_grid(results, workdir):
    result = results["sample"]

    assert result.returncode == 0, result.stderr
    assert png_size(workdir / "out" / "samples.png") == (4 * TILE + 1, 3 * TILE + 1)  # 10 in rows of 4


def test_reconstruct_reads_a_folder_of_images(results, inputs):
    result = results["reconstruct"]

    assert result.returncode == 0, result.stderr
    assert png_size(inputs / "recon.png") == (8 * TILE + 1, 2 * TILE + 1)  # a row of 5 inputs, one of reconstructions


def test_encode_writes_posterior_means(results, run, inputs):
    result = results["encode"]

    assert result.returncode == 0, result.stderr
    z = np.load(inputs / "z.npy")
    assert z.shape == (40, LATENT_DIM) and np.isfinite(z).all()
    # To .npz: the same means, and the posterior's standard deviations beside them.
    assert main(["encode", str(run), "--input", str(inputs / "digits.npy"), "-o", str(inputs / "z.npz")]) == 0
    with np.load(inputs / "z.npz") as moments:
        np.testing.assert_array_equal(moments["mean"], z)
        assert moments["stddev"].shape == z.shape and np.all(moments["stddev"] > 0)


def test_score_writes_scores_p_values_and_flags_calibrated_on_the_test_split(results, inputs):
    result = results["score"]

    assert result.returncode == 0, result.stderr
    assert "calibrated on 297 images of the digits test split" in result.stdout
    with open(inputs / "scores.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "score", "p_value", "flagged"]
    assert [int(r[0]) for r in rows[1:]] == list(range(30))
    score, p, flagged = (np.array([float(r[i]) for r in rows[1:]]) for i in (1, 2, 3))
    assert np.all(np.isfinite(score))
    # Conformal p-values over 297 calibration images: multiples of 1/298, flagged where <= 0.05.
    np.testing.assert_allclose(p * 298, np.round(p * 298), atol=1e-3)
    assert np.all((p >= 1 / 298 - 1e-6) & (p <= 1)) and np.array_equal(flagged == 1, p <= 0.05)
    assert png_size(inputs / "scores.png")[0] > 0


def test_plot_latent_draws_the_test_set(results, workdir):
    result = results["plot-latent"]

    assert result.returncode == 0, result.stderr
    assert png_size(workdir / "latent.png") == (600, 600)


def test_evaluate_prints_json(results):
    result = results["evaluate"]

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("log_likelihood", "log_likelihood_stderr", "bits_per_dim", "elbo", "kl", "active_units"):
        assert np.isfinite(report[key]), key
    assert report["num_examples"] == 297 and report["num_samples"] == 10
    assert report["log_likelihood"] >= report["elbo"] - 1.0
    assert 0 <= report["active_units"] <= LATENT_DIM


def test_evaluate_in_bfloat16_is_within_five_hundredths_of_a_nat_of_float32(results, run, capsys):
    # Both load the run's seed generator, so they draw the same noise: only the rounding differs.
    assert main(["evaluate", str(run), "--num-samples", "10", "--json", "--precision", "bfloat16"]) == 0
    float32, bfloat16 = json.loads(results["evaluate"].stdout), json.loads(capsys.readouterr().out)
    assert (float32["precision"], bfloat16["precision"]) == ("float32", "bfloat16")
    assert bfloat16["log_likelihood"] != float32["log_likelihood"]
    assert abs(bfloat16["log_likelihood"] - float32["log_likelihood"]) < 0.05


def test_evaluate_reports_reliability_and_takes_the_better_estimators(results, run, capsys):
    report = json.loads(results["evaluate"].stdout)
    assert 0.0 <= report["unreliable_fraction"] <= 1.0 and 1.0 <= report["ess_min"] <= 10
    assert (report["proposal"], report["method"]) == ("encoder", "importance")
    assert main(["evaluate", str(run), "--num-samples", "10", "--json", "--proposal", "refined"]) == 0
    refined = json.loads(capsys.readouterr().out)
    assert refined["proposal"] == "refined" and np.isfinite(refined["log_likelihood"])
    # The table names the estimator and carries the reliability figures.
    assert main(["evaluate", str(run), "--num-samples", "4", "--method", "ais", "--ais-steps", "20"]) == 0
    out, err = capsys.readouterr()
    assert "AIS, 4 chains of 20 steps" in out and "unreliable" in out and "ESS min" in out
    assert main(["evaluate", str(run), "--method", "ais", "--proposal", "refined"]) == 2
    assert "--proposal: AIS starts from the prior p(z) and takes no proposal" in capsys.readouterr().err


def test_evaluate_warns_in_one_line_when_many_estimates_are_unreliable():
    report = {"unreliable_fraction": 0.4, "num_examples": 297, "proposal": "encoder", "method": "importance"}
    warning = commands._unreliable_warning(report)
    assert warning == ("warning: 40% of the 297 per-image estimates are unreliable (PSIS k-hat > 0.7 with a "
                       "standard error > 0.05 nats, or ESS < 1% of K); try --proposal refined or --method ais.")
    assert "try --method ais." in commands._unreliable_warning({**report, "proposal": "refined"})
    assert "try more --ais-steps." in commands._unreliable_warning({**report, "method": "ais"})


def test_export_writes_saved_model_and_tflite(results, workdir):
    result = results["export"]

    assert result.returncode == 0, result.stderr
    exported = workdir / "export" / "digits"
    assert (exported / "manifest.json").is_file()
    assert (exported / "saved_model").is_dir()
    assert (exported / "model.tflite").is_file()


def test_every_subcommand_has_help(capsys):
    commands = ("train", "evaluate", "export", "sample", "reconstruct", "encode", "score", "plot-latent")
    for command in commands:
        with pytest.raises(SystemExit) as exit:
            main([command, "--help"])
        assert exit.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: tfvae {command}")


def test_a_user_error_is_one_line_on_stderr_with_status_2_also_from_python_m_tfvae(results):
    result = results["python -m, missing run"]

    assert result.returncode == 2
    assert error_lines(result.stderr) == ["tfvae: error: no/such/run: no such run directory."]
    assert result.stdout == ""


def check_error(capsys, argv, message):
    """main(argv) fails with exit status 2 and one line on stderr that contains `message`."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_bad_runs_inputs_and_flags_are_refused_and_the_run_is_left_alone(run, inputs, capsys, tmp_path):
    before = snapshot(run)
    (tmp_path / "empty").mkdir()
    (tmp_path / "unfinished" / "checkpoints").mkdir(parents=True)
    np.save(tmp_path / "wrong_shape.npy", np.zeros((4, 7, 7)))
    np.save(tmp_path / "strings.npy", np.array([["a"] * 64] * 2))
    (tmp_path / "pngs").mkdir()
    (tmp_path / "pngs" / "broken.png").write_bytes(b"not a png")
    Image.new("L", (8, 8)).save(tmp_path / "pngs" / "fine.png")

    check_error(capsys, ["sample", tmp_path / "missing"], "no such run directory")
    check_error(capsys, ["sample", tmp_path / "empty"], "no model.keras")
    check_error(capsys, ["encode", run, "--input", tmp_path / "wrong_shape.npy", "-o", tmp_path / "z.npy"],
                "expected images of shape (N, 8, 8, 1) for this model; got shape (4, 7, 7)")
    check_error(capsys, ["score", run, "--input", tmp_path / "strings.npy", "-o", tmp_path / "s.csv"],
                "expected numeric images; got dtype <U1")
    check_error(capsys, ["reconstruct", run, "--input", tmp_path / "pngs", "-o", tmp_path / "r.png"],
                "broken.png: cannot read the image")
    check_error(capsys, ["encode", run, "--input", tmp_path / "nothing.npy", "-o", tmp_path / "z.npy"],
                "no such file or folder")
    check_error(capsys, ["sample", run, "-o", run / "model.keras"], "-o: expected a file ending in .png or .npy")
    check_error(capsys, ["score", run, "--input", inputs / "digits.npy", "-o", run / "history.csv"],
                "is a file of the run")
    check_error(capsys, ["score", run, "--input", inputs / "digits.npy", "-o", tmp_path / "s.csv",
                         "--false-positive-rate", "0.001"],
                "--false-positive-rate: 0.001 needs at least 999 calibration examples ((n + 1) >= 1 / rate)")
    check_error(capsys, ["score", run, "--input", inputs / "digits.npy", "-o", tmp_path / "s.csv",
                         "--calibrate", tmp_path / "wrong_shape.npy"],
                "wrong_shape.npy: expected images of shape (N, 8, 8, 1) for this model; got shape (4, 7, 7)")
    check_error(capsys, ["score", run, "--input", inputs / "digits.npy", "-o", tmp_path / "s.csv",
                         "--method", "typicality"], "--method: invalid choice: 'typicality'")
    check_error(capsys, ["export", run, "--out", run, "--overwrite"], "an export there would replace it")
    check_error(capsys, ["export", run, "--out", run.parent, "--overwrite"], "an export there would replace it")
    check_error(capsys, ["evaluate", run, "--dataset", "mnist-5k", "--num-samples", 2],
                "expected images of shape (N, 8, 8, 1) for this model; got shape (1000, 28, 28, 1)")
    check_error(capsys, ["train", "--dataset", "nope", "--out", tmp_path / "new"], "--dataset: expected one of")
    assert not (tmp_path / "new").exists()
    check_error(capsys, ["train", "--epochs", 0, "--out", tmp_path / "new"], "--epochs: expected an integer >= 1")
    check_error(capsys, ["train", "--out", run], "already exists; continue it with --resume")
    check_error(capsys, ["train", "--resume", "--out", run, "--latent-dim", 7], "--latent-dim 7 contradicts")
    check_error(capsys, ["train", "--resume", "--out", run, "--epochs", 1], "already trained 2 epochs")
    check_error(capsys, ["train", "--resume", "--out", tmp_path / "unfinished"], "no config.json")

    assert main(["train", "--resume", "--out", str(run)]) == 0
    assert "already trained for 2 epochs; nothing to do" in capsys.readouterr().out
    assert snapshot(run) == before
    assert not os.listdir(tmp_path / "empty")


@pytest.mark.slow
def test_resume_with_more_epochs_trains_longer(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["train", "--resume", "--out", str(copy), "--epochs", "3"]) == 0

    assert "Resuming" in capsys.readouterr().out
    with open(copy / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2"]
    assert json.loads((copy / "config.json").read_text())["epochs"] == 3
    assert os.listdir(copy / "checkpoints") == ["epoch-0003.keras"]
    # Draw for draw the run trained in one go: the noise stream (saved in the checkpoint) and the data's
    # shuffles and binary draws (the pipeline moved on by the epochs trained) go on where they were.
    flags = {**dict(zip(DIGITS_RUN_TRAIN[1::2], DIGITS_RUN_TRAIN[2::2])), "--epochs": "3",
             "--out": str(tmp_path / "uninterrupted")}
    assert main(["train", *(a for pair in flags.items() for a in pair)]) == 0
    with open(copy / "history.csv") as resumed, open(tmp_path / "uninterrupted" / "history.csv") as uninterrupted:
        assert list(csv.DictReader(resumed))[2] == list(csv.DictReader(uninterrupted))[2]


@pytest.mark.slow  # the default suite must stay under 10 minutes on 2 cores
def test_training_killed_with_sigkill_resumes_where_it_stopped(tmp_path):
    epochs = 6
    train = command("train", "--dataset", "digits", "--latent-dim", 2, "--batch-size", 100, "--epochs", epochs,
                    "--out", "run")
    process = subprocess.Popen(train, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not glob.glob(str(tmp_path / "run" / "checkpoints" / "epoch-*.keras")):
        assert process.poll() is None and time.monotonic() < deadline, "training ended before its first checkpoint"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    with open(tmp_path / "run" / "history.csv") as f:
        assert len(list(csv.DictReader(f))) < epochs  # killed mid-training, not after

    resumed = tfvae("train", "--resume", "--out", "run", cwd=tmp_path)

    assert resumed.returncode == 0, resumed.stderr
    first = next(line for line in resumed.stdout.splitlines() if line.startswith("Resuming"))
    assert int(first.split("epoch ")[-1].split(" of")[0]) >= 2
    assert "Epoch 1/" not in resumed.stdout
    with open(tmp_path / "run" / "history.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == list(range(epochs))
    assert os.listdir(tmp_path / "run" / "checkpoints") == [f"epoch-{epochs:04d}.keras"]
    assert (tmp_path / "run" / "model.keras").is_file()


def test_conditioning_on_a_label_of_a_million_is_one_line_about_memory(tmp_path, capsys, monkeypatch):
    # np.eye(10**6 + 1) for 12 labels asked numpy for 3.6 TiB and failed with a MemoryError traceback.
    monkeypatch.chdir(tmp_path)
    labels = np.arange(12) % 10
    labels[4] = 10**6
    np.savez(tmp_path / "big.npz", x=np.zeros((12, 4, 4), np.float32), y=labels)
    check_error(capsys, ["train", "--dataset", tmp_path / "big.npz", "--condition", "labels", "--epochs", "1",
                         "--out", tmp_path / "run"], "1000001 classes (the largest label + 1): would need")
    assert not (tmp_path / "run").exists()


def test_the_table_of_one_example_says_it_has_no_standard_error():
    result = {"log_likelihood": -20.5, "log_likelihood_stderr": float("nan"), "bits_per_dim": 0.5, "elbo": -21.0,
              "reconstruction": -19.0, "kl": 2.0, "gap": 0.5, "active_units": 2, "latent_dim": 2, "num_samples": 10,
              "precision": "float32", "binarized": False, "run": "r", "dataset": "digits", "num_examples": 1,
              "proposal": "encoder", "method": "importance", "pareto_k_max": float("nan"), "ess_min": 1.0,
              "unreliable_fraction": 0.0}
    table = commands._table(result)
    assert "-20.50 nats (one example: no standard error)" in table and "nan" not in table
    assert "-20.50 ± 0.25 nats" in commands._table({**result, "log_likelihood_stderr": 0.25, "num_examples": 2})
