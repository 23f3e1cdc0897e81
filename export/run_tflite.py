"""Runs one signature of an exported tfvae TFLite model with LiteRT and prints its outputs as JSON.

Needs only ai-edge-litert and numpy (no TensorFlow, no tfvae), as on a device:

    python run_tflite.py --model export/vae --signature reconstruct --input x.npy
    python run_tflite.py --model export/vae/model_float16.tflite --signature sample --input n.npy

--model is an export directory (its model.tflite is used) or a .tflite file. --input is a .npy
file holding the one input of the signature, or a .npz file with one array per input name
(sample_seeded takes num_samples and seed). The output is one JSON object: {output name: lists}.
"""

import argparse
import json
import os
import sys

import numpy as np
from inputs import check_shapes, read_inputs  # export/inputs.py, beside this script


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="export directory or a .tflite file")
    parser.add_argument("--signature", default="encode", help="e.g. encode, reconstruct, log_prob")
    parser.add_argument("--input", required=True, help=".npy (one input) or .npz (named inputs)")
    args = parser.parse_args(argv)

    from ai_edge_litert.interpreter import Interpreter

    path = os.path.join(args.model, "model.tflite") if os.path.isdir(args.model) else args.model
    interpreter = Interpreter(model_path=path)
    signatures = interpreter.get_signature_list()
    if args.signature not in signatures:
        sys.exit(f"--signature: expected one of {sorted(signatures)}; got {args.signature!r}.")
    runner = interpreter.get_signature_runner(args.signature)
    details = runner.get_input_details()
    inputs = read_inputs(args.input, list(details))
    check_shapes(inputs, {name: detail["shape_signature"] for name, detail in details.items()})
    try:
        outputs = runner(**{name: np.asarray(value, details[name]["dtype"]) for name, value in inputs.items()})
    except RuntimeError as error:
        # The graph refuses NaN, inf, x outside the likelihood's support and negative counts.
        sys.exit(f"--input: the {args.signature} signature refused it (see export/README.md): {error}")
    print(json.dumps({name: np.asarray(value).tolist() for name, value in outputs.items()}))


if __name__ == "__main__":
    main()
