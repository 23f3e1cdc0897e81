"""Runs one signature of an exported tfvae SavedModel and prints its outputs as JSON.

Needs only TensorFlow and numpy, not tfvae:

    python serve_saved_model.py --model export/vae --signature reconstruct --input x.npy
    python serve_saved_model.py --model export/vae --signature sample_seeded --input draw.npz

--model is an export directory (or its saved_model/ inside). --input is a .npy file holding the
one input of the signature, or a .npz file with one array per input name (sample_seeded takes
num_samples and seed). The output is one JSON object: {output name: nested lists}.
"""

import argparse
import json
import os
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="export directory or its saved_model/")
    parser.add_argument("--signature", default="serving_default", help="e.g. encode, reconstruct, log_prob")
    parser.add_argument("--input", required=True, help=".npy (one input) or .npz (named inputs)")
    args = parser.parse_args(argv)

    import tensorflow as tf

    path = args.model
    if os.path.isdir(os.path.join(path, "saved_model")):
        path = os.path.join(path, "saved_model")
    signatures = tf.saved_model.load(path).signatures
    if args.signature not in signatures:
        sys.exit(f"--signature: expected one of {sorted(signatures)}; got {args.signature!r}.")
    function = signatures[args.signature]
    specs = function.structured_input_signature[1]
    inputs = read_inputs(args.input, list(specs))
    shapes = {name: [-1 if d is None else d for d in spec.shape.as_list()] for name, spec in specs.items()}
    check_shapes(inputs, shapes)
    try:
        outputs = function(**{name: tf.constant(value, specs[name].dtype) for name, value in inputs.items()})
    except tf.errors.InvalidArgumentError as error:
        # The graph's assertions name the input: NaN, inf, x outside the likelihood's support, negative counts.
        lines = [line for line in error.message.splitlines() if "assertion failed" in line] or [error.message]
        sys.exit(f"--input: the {args.signature} signature refused it: {lines[0].strip()}")
    print(json.dumps({name: value.numpy().tolist() for name, value in outputs.items()}))


if __name__ == "__main__":
    main()
