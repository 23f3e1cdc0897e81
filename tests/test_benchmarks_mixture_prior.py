"""benchmarks/mixture_prior.py: bad arguments exit 2 naming the flag; --quick prints valid JSON whose two
contenders give the same log p(x) on the same noise. No timing is asserted."""

import functools
import json
import math
import os

import pytest

import benchmark_scripts

_run = functools.partial(benchmark_scripts.run, "mixture_prior.py")


@pytest.mark.parametrize("args, message", [
    (["--examples", "0"], "--examples: expected an integer >= 1; got 0"),
    (["--examples", "20000"], "--examples: expected at most 10000"),
    (["--components", "-3"], "--components: expected an integer >= 1; got -3"),
    (["--out", "/no/such/dir/r.json"], "--out: expected a file in an existing directory"),
])
def test_bad_arguments_exit_2_naming_the_flag(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        benchmark_scripts.load("mixture_prior.py")._parse(args)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


@pytest.mark.slow
def test_quick_run_times_both_forms_of_the_same_estimate(tmp_path):
    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("needs Debian's dataset-fashion-mnist")
    out = tmp_path / "mixture.json"
    completed = _run("--quick", "--out", str(out))
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout)
    assert json.loads(out.read_text()) == result
    for contender in result["contenders"].values():
        assert contender["seconds_median"] > 0 and len(contender["seconds"]) == 1
    assert math.isfinite(result["ratio_tfp_broadcast_vs_gemm"])
    # The same model and noise: the two forms of log p(z) differ only by float32 rounding.
    assert abs(result["estimate_difference_nats"]["mean"]) < 1e-3
    assert result["estimate_difference_nats"]["mean_log_prob"] < 0
