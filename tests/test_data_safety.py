"""Nothing the `tfvae` command or `tfvae.export.save` is pointed at loses data (issue 17): an empty
--out, an export over a folder that is not an export, two trainings of one run at once, a SIGKILL
between the steps of an export's move into place or of a run's first writes, a refused --resume."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import tfvae
from tfvae import export
from tfvae.cli import main, runs

from test_cli import ENV, check_error, snapshot

TRAIN = ["train", "--dataset", "digits", "--latent-dim", 2, "--batch-size", 100]


def train(capsys, *argv):
    """main(["train", ...]) in this process, where TensorFlow is already imported: seconds, not tens."""
    status = main([str(a) for a in [*TRAIN, *argv]])
    out = capsys.readouterr()
    assert status == 0, out.err
    return out


def dead_pid():
    """The id of a process that has exited: what a killed writer leaves in its leftovers' names."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def hidden(directory):
    return sorted(name for name in os.listdir(directory) if name.startswith("."))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run of one epoch; tests that change it work on a copy."""
    run = tmp_path_factory.mktemp("runs") / "digits"
    assert main([str(a) for a in [*TRAIN, "--epochs", 1, "--out", run]]) == 0
    return run


@pytest.fixture
def run_copy(trained_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


# --- train --out ------------------------------------------------------------------------------------


@pytest.mark.parametrize("out", ["", "  "])
def test_train_refuses_an_empty_out_and_leaves_the_current_folder_alone(out, run_copy, capsys, monkeypatch):
    monkeypatch.chdir(run_copy)  # inside a run, where an empty --out overwrote it
    before = snapshot(run_copy)

    check_error(capsys, ["train", "--dataset", "digits", "--out", out], "--out: expected a run directory")
    check_error(capsys, ["train", "--resume", "--out", out], "--out: expected a run directory")

    assert snapshot(run_copy) == before
    assert sorted(os.listdir(run_copy / "checkpoints")) == ["epoch-0001.keras"]


def test_train_refuses_an_existing_folder_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.py").write_text("print('mine')\n")

    check_error(capsys, [*TRAIN, "--out", tmp_path / "src"], "--out: ")

    assert os.listdir(tmp_path / "src") == ["main.py"]
    assert (tmp_path / "src" / "main.py").read_text() == "print('mine')\n"


# --- one training per run at a time ---------------------------------------------------------------


@contextlib.contextmanager
def locked_by_another_process(run):
    """Holds RUN/.lock as a running `tfvae train` does, from a process that is then SIGKILLed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); sys.stdin.read()", str(run / runs.LOCK)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        yield
    finally:
        holder.kill()  # the kernel releases the lock of a killed process
        holder.wait()


@pytest.mark.slow
def test_a_run_in_use_by_another_process_is_refused(run_copy, tmp_path, capsys):
    """The second of two `train --out R` exits 2 and the first one's files stay as they were."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with locked_by_another_process(run_copy), locked_by_another_process(fresh):
        before = snapshot(run_copy)
        check_error(capsys, ["train", "--resume", "--out", run_copy, "--epochs", 2], f"{run_copy} is in use")
        check_error(capsys, [*TRAIN, "--latent-dim", 5, "--out", fresh], f"{fresh} is in use")
        assert snapshot(run_copy) == before
        assert os.listdir(fresh) == [runs.LOCK]

    assert "Resuming" in train(capsys, "--resume", "--out", run_copy, "--epochs", 2).out
    assert "Training" in train(capsys, "--epochs", 1, "--out", fresh).out


# --- export --overwrite -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model(digits, tmp_path_factory):
    """A trained 64-pixel VAE, saved as a .keras file for the subprocesses."""
    x_train, _ = digits
    keras.utils.set_random_seed(0)
    model = tfvae.VAE(input_shape=(64,), latent_dim=2)
    model.fit(x_train, epochs=1, batch_size=100, verbose=0)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return model, path


def test_overwrite_replaces_only_an_earlier_export(small_model, tmp_path, monkeypatch):
    model, _ = small_model
    source = tmp_path / "project"
    (source / "data").mkdir(parents=True)
    (source / "train.py").write_text("import tfvae\n")
    (source / "data" / "x.npy").write_bytes(b"\x93NUMPY")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "manifest.json").write_text("{}")
    before = snapshot(tmp_path)

    def no_work(*args, **kwargs):
        raise AssertionError("the export began before the directory was checked")

    monkeypatch.setattr(export, "_write", no_work)
    monkeypatch.chdir(source)
    for directory in (".", "data", str(source), str(fake)):
        with pytest.raises(FileExistsError, match="is not a tfvae export") as error:
            export.save(model, directory, overwrite=True)
        assert "overwrite" in str(error.value)

    assert snapshot(tmp_path) == before
    assert hidden(tmp_path) == [] and hidden(source) == []


def test_the_cli_names_its_flags_when_it_refuses_an_export_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")

    with pytest.raises(FileExistsError) as refused:
        export.check_directory(str(tmp_path), True, "--out", "--overwrite")
    assert str(refused.value).startswith(f"--out: {str(tmp_path)!r} is not a tfvae export")
    assert "--overwrite replaces only" in str(refused.value) and "overwrite=True" not in str(refused.value)
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite to replace it"):
        export.check_directory(str(tmp_path), False, "--out", "--overwrite")


def test_export_over_the_current_folder_from_the_command_line_deletes_nothing(trained_run, tmp_path, capsys,
                                                                             monkeypatch):
    (tmp_path / "train.py").write_text("import tfvae\n")
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)

    check_error(capsys, ["export", trained_run, "--out", ".", "--overwrite", "--no-tflite"], "is not a tfvae export")

    assert snapshot(tmp_path) == before and hidden(tmp_path) == []


KILLED_EXPORT = """
import os, signal, sys

import keras

import tfvae
from tfvae import export

model_path, directory, step = sys.argv[1:]


def kill_after(move):
    def killed(*args):
        move(*args)
        os.kill(os.getpid(), signal.SIGKILL)

    return killed


if step == "exchange":
    export._exchange = kill_after(export._exchange)
else:  # a file system without an atomic exchange: killed between moving the old export aside and the new in
    export._exchange = lambda staging, directory: False
    rename = os.rename
    os.rename = lambda source, target: (kill_after(rename) if source == directory else rename)(source, target)
export.save(keras.models.load_model(model_path), directory, tflite=False, log_prob_samples=9, overwrite=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("step", ["exchange", "fallback"])
def test_export_killed_while_replacing_an_export_leaves_a_complete_one(step, small_model, tmp_path):
    model, model_path = small_model
    directory = str(tmp_path / "export")
    export.save(model, directory, tflite=False, log_prob_samples=7)

    killed = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(model_path), directory, step],
                            env=ENV, capture_output=True, text=True, timeout=300)

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert hidden(tmp_path), "the killed export left no leftovers: the kill came too early"
    if step == "exchange":  # the new export is in place, whole
        with open(os.path.join(directory, "manifest.json")) as f:
            assert json.load(f)["log_prob_samples"] == 9
        assert os.path.isfile(os.path.join(directory, "saved_model", "saved_model.pb"))
    else:  # the next export puts the old one back first, so it is not replaced without --overwrite
        with pytest.raises(FileExistsError, match="already exists"):
            export.save(model, directory, tflite=False)
        with open(os.path.join(directory, "manifest.json")) as f:
            assert json.load(f)["log_prob_samples"] == 7
    live = tmp_path / f".export.partial-{os.getpid()}-0123abcd"  # a running export's: not stale
    live.mkdir()

    export.save(model, directory, tflite=False, log_prob_samples=11, overwrite=True)

    assert hidden(tmp_path) == [live.name]
    with open(os.path.join(directory, "manifest.json")) as f:
        assert json.load(f)["log_prob_samples"] == 11


def test_the_next_export_puts_back_the_old_export_of_one_killed_between_two_renames(small_model, tmp_path):
    """What the fallback without an atomic swap leaves when killed: no export at the path, the old one
    in a `.old-` folder, the new one in a `.partial-` folder (the slow test above kills one for real)."""
    model, _ = small_model
    dead = dead_pid()
    for role, marker in (("old", 7), ("partial", 9)):
        leftover = tmp_path / f".export.{role}-{dead}-0123abcd"
        leftover.mkdir()
        (leftover / "manifest.json").write_text(json.dumps({"format": "tfvae-export/1", "log_prob_samples": marker}))

    with pytest.raises(FileExistsError, match="already exists"):
        export.save(model, str(tmp_path / "export"), tflite=False)

    assert os.listdir(tmp_path) == ["export"]
    assert json.loads((tmp_path / "export" / "manifest.json").read_text())["log_prob_samples"] == 7


# --- train's writes ---------------------------------------------------------------------------------


def test_a_refused_resume_writes_nothing(run_copy, tmp_path, capsys):
    """An edited config and data that do not fit the checkpoint: refused before config.json or
    history.csv is rewritten."""
    np.savez(tmp_path / "small.npz", x_train=np.full((50, 4, 4, 1), 0.5, np.float32),
             x_test=np.full((10, 4, 4, 1), 0.5, np.float32))
    config = json.loads((run_copy / runs.CONFIG).read_text())
    config.update(dataset=str(tmp_path / "small.npz"), input_shape=[4, 4, 1])
    runs.write_json(run_copy / runs.CONFIG, config)
    before = snapshot(run_copy)

    check_error(capsys, ["train", "--resume", "--out", run_copy, "--epochs", 3],
                "checkpoints/epoch-0001.keras: its model takes x of shape (8, 8, 1)")

    assert snapshot(run_copy) == before


def test_a_refused_resume_keeps_history_rows(run_copy, capsys):
    config = json.loads((run_copy / runs.CONFIG).read_text())
    config["latent_dim"] = 5
    runs.write_json(run_copy / runs.CONFIG, config)
    before = snapshot(run_copy)

    check_error(capsys, ["train", "--resume", "--out", run_copy, "--epochs", 3], "latent_dim 2")

    assert snapshot(run_copy) == before


def test_data_outside_the_likelihood_support_is_refused_before_the_run_is_created(tmp_path, capsys):
    grey = np.linspace(0.0, 2.0, 60 * 16, dtype=np.float32).reshape(60, 4, 4, 1)
    np.savez(tmp_path / "bright.npz", x_train=grey[:50], x_test=grey[50:])

    check_error(capsys, ["train", "--dataset", tmp_path / "bright.npz", "--binarization", "none",
                         "--out", tmp_path / "run"], "(train split): the Bernoulli likelihood expects values in [0, 1]")

    assert not (tmp_path / "run").exists()


def test_stale_temporary_files_are_removed_by_the_next_train(run_copy, capsys):
    dead, alive = dead_pid(), os.getpid()
    for directory in (run_copy, run_copy / runs.CHECKPOINTS):
        (directory / f".tmp-{dead}-x1y2z3.keras").write_bytes(b"half a model")
        (directory / f".tmp-{alive}-x1y2z3.keras").write_bytes(b"being written")

    train(capsys, "--resume", "--out", run_copy, "--epochs", 2)

    assert hidden(run_copy) == sorted([runs.LOCK, f".tmp-{alive}-x1y2z3.keras"])
    assert hidden(run_copy / runs.CHECKPOINTS) == [f".tmp-{alive}-x1y2z3.keras"]


KILLED_TRAIN = """
import os, signal, sys

from tfvae.cli import main, runs

run, point = sys.argv[1:]
write_json = runs.write_json


def write_then_die(path, value):
    if point == "after the config":
        write_json(path, value)
    os.kill(os.getpid(), signal.SIGKILL)


runs.write_json = write_then_die
main(["train", "--dataset", "digits", "--latent-dim", "2", "--epochs", "1", "--batch-size", "100", "--out", run])
"""


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before the config", "after the config"])
def test_a_run_killed_during_its_first_writes_is_accepted_again(point, tmp_path, capsys):
    run = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILLED_TRAIN, str(run), point],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert run.is_dir()

    if point == "before the config":
        assert not (run / runs.CONFIG).exists()
        train(capsys, "--epochs", 1, "--out", run)
    else:
        assert (run / runs.CONFIG).is_file()
        check_error(capsys, [*TRAIN, "--out", run], "continue it with --resume")
        train(capsys, "--resume", "--out", run)

    assert os.listdir(run / runs.CHECKPOINTS) == ["epoch-0001.keras"]
    assert (run / runs.MODEL).is_file()


def test_a_run_killed_before_its_config_can_be_trained_anew(tmp_path, capsys):
    """What a kill before config.json leaves (a lock file, a temporary file), and what the old order of
    writes left (an empty checkpoints/), is taken as a new run; the slow test above kills one for real."""
    run = tmp_path / "run"
    (run / runs.CHECKPOINTS).mkdir(parents=True)
    (run / runs.LOCK).write_text("12\n")
    (run / f".tmp-{dead_pid()}-x1y2z3.json").write_text('{"latent_')

    train(capsys, "--epochs", 1, "--out", run)

    assert (run / runs.MODEL).is_file()
    assert hidden(run) == [runs.LOCK]
