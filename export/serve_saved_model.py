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

from inputs import check_shapes, read_inputs  # export/inputs.py, beside this script


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
