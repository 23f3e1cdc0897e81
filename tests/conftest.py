import fcntl
import json
import os
import subprocess
import sys

# The environment of a user who has not set TF_CPP_MIN_LOG_LEVEL, for commands whose output is checked.
USER_ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPUs, so tf.distribute strategies are tested for real; this must precede any TF op.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state, so its numbers are reproducible."""
    keras.utils.set_random_seed(0)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled 8x8 digits, flattened to 64 values in [0, 1] and binarized at 0.5."""
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0 > 0.5).astype(np.float32)
    return x[:1500], x[1500:]


@pytest.fixture(scope="session")
def mirrored():
    """A MirroredStrategy over the two logical CPUs, one for the whole session: in TF 2.21 every
    MirroredStrategy's collective ops start from the same keys, so a second one in the process can
    meet the first's with other shapes ("Shape mismatch in collective instance")."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


# The run `digits_run` trains: scikit-learn's digits, 2 epochs, as the command-line tests read it.
DIGITS_RUN_LATENT_DIM = 3
# Diagnosed at its last epoch only, with K = 10 (test_diagnostics reads them).
DIGITS_RUN_TRAIN = ("train", "--dataset", "digits", "--latent-dim", str(DIGITS_RUN_LATENT_DIM), "--epochs", "2",
                    "--batch-size", "100", "--diagnostics-every", "2", "--diagnostics-samples", "10",
                    "--out", "runs/digits")


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """(the run directory, the `tfvae train` CompletedProcess) of one small run trained by the command
    in a user's environment (no TF_CPP_MIN_LOG_LEVEL), shared by every test that only reads it.

    Training it takes 10-20 s, once per session: under xdist the first worker to ask trains it,
    under a lock, and the others read what it wrote.
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this session's, above each worker's own
    workdir, record = shared / "digits-run", shared / "digits-run.json"
    with open(shared / "digits-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            workdir.mkdir()
            train = subprocess.run([sys.executable, "-m", "tfvae", *DIGITS_RUN_TRAIN], cwd=workdir, env=USER_ENV,
                                   capture_output=True, text=True, timeout=300)
            record.write_text(json.dumps({"returncode": train.returncode, "stdout": train.stdout,
                                          "stderr": train.stderr}))
    result = json.loads(record.read_text())
    train = subprocess.CompletedProcess(["tfvae", *DIGITS_RUN_TRAIN], result["returncode"], result["stdout"],
                                        result["stderr"])
    assert train.returncode == 0, train.stderr
    return workdir / "runs" / "digits", train


# Exports of the heads a module's parametrized `trained` fixture trains, 15-40 s each, left to `-m slow`: the
# default run exports the discretized logistic's bins here and tfvae's other heads in test_export.py.
SLOW_EXPORTS = {
    "test_models.py::test_exports_to_saved_model_and_tflite_with_parity": {"negative_binomial", "vamp",
                                                                         "continuous_bernoulli", "poisson"},
    "test_custom_heads.py::test_exports_to_saved_model_and_tflite_with_parity": {"encoder_prior", "poisson"},
}


# Heads whose every test is left to `-m slow`: a user's heteroscedastic normal, a second user likelihood
# beside the Poisson one.
SLOW_HEADS = {"test_custom_heads.py": {"two_parameter"}}


@pytest.hookimpl(tryfirst=True)  # before -m "not slow" deselects
def pytest_collection_modifyitems(items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        trained = callspec.params.get("trained") if callspec else None
        if trained in SLOW_EXPORTS.get(f"{item.path.name}::{item.originalname}", ()) or \
                trained in SLOW_HEADS.get(item.path.name, ()):
            item.add_marker(pytest.mark.slow)
