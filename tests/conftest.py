import os

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
