"""benchmarks/distribute.py: bad arguments exit 2 at once; --quick (slow) prints valid JSON.

No timing is asserted: the numbers are only checked to be positive and finite.
"""

import functools
import json
import math

import pytest

import benchmark_scripts

_run = functools.partial(benchmark_scripts.run, "distribute.py")


@pytest.mark.parametrize("args, message", [
    (["--batch-sizes", "100,0"], "--batch-sizes: expected positive integers separated by commas; got '100,0'"),
    (["--strategies", "mirrored,tpu"], "--strategies: expected some of one_device, mirrored, multi_worker; got tpu"),
    (["--steps", "0"], "--steps: expected an integer >= 1; got 0"),
])
def test_bad_arguments_exit_2_naming_the_flag(args, message):
    completed = _run(*args, timeout=60)
    assert completed.returncode == 2 and message in completed.stderr
    assert completed.stdout == ""


@pytest.mark.slow  # ~25 s: three strategies, fresh processes each
def test_quick_run_measures_every_strategy():
    completed = _run("--quick")
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout)
    assert [(r["strategy"], r["replicas"]) for r in result["results"]] == [
        ("one_device", 1), ("mirrored", 2), ("multi_worker", 2)]
    for row in result["results"]:
        assert math.isfinite(row["examples_per_s"]) and row["examples_per_s"] > 0
        assert row["vs_one_device"] > 0
