"""Reading a consumer script's --input for a signature: shared by run_tflite.py and serve_saved_model.py.

Like them it needs only numpy: no tfvae.
"""

import sys

import numpy as np


def read_inputs(path, names):
    """{input name: array} from a .npy (for a one-input signature) or a .npz keyed by input name."""
    data = np.load(path)
    if isinstance(data, np.ndarray):
        if len(names) != 1:
            sys.exit(f"--input: this signature takes {sorted(names)}; pass an .npz file with those names.")
        return {names[0]: data}
    arrays = {name: data[name] for name in data.files}
    if sorted(arrays) != sorted(names):
        sys.exit(f"--input: this signature takes {sorted(names)}; the .npz file holds {sorted(arrays)}.")
    return arrays


def check_shapes(inputs, shapes):
    """Exits naming the input unless each array has its signature's shape (-1: any size)."""
    for name, value in inputs.items():
        expected, actual = list(shapes[name]), list(np.shape(value))
        if len(actual) != len(expected) or any(e not in (-1, a) for e, a in zip(expected, actual)):
            wanted = ", ".join("batch" if e == -1 else str(e) for e in expected)
            sys.exit(f"--input: expected {name} of shape ({wanted}); got {tuple(actual)}.")
