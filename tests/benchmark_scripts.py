"""The scripts of benchmarks/ as a user runs them: `python benchmarks/NAME ...` in a real subprocess from
the repository's root, or imported as a module to call its argument parsing. Shared by the tests of each
script."""

import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def path(name):
    """The path of benchmarks/NAME."""
    return os.path.join(ROOT, "benchmarks", name)


def run(name, *args, timeout=300):
    """The finished `python benchmarks/NAME *args`, its output captured as text. TensorFlow's C++ start-up
    lines are kept out of stderr, so a failing test shows the script's own."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, path(name), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


def load(name):
    """benchmarks/NAME imported as a module (its argument checks answer without a subprocess's start-up), with
    benchmarks/ on sys.path for its imports of the other files there, as `python benchmarks/NAME` has it."""
    if os.path.join(ROOT, "benchmarks") not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py") + "_benchmark", path(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
