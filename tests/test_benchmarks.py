"""benchmarks/throughput.py runs on tiny settings and prints valid JSON; bad arguments exit 2.

No timing is asserted: machines are noisy. The benchmark's numbers are only checked to be positive
and finite.
"""

import functools
import json
import math

import pytest

import benchmark_scripts

_run = functools.partial(benchmark_scripts.run, "throughput.py")


def _numbers(tree, path=""):
    """Every number in a JSON tree, with its path."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _numbers(value, f"{path}.{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _numbers(value, f"{path}[{i}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, tree


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "result.json"
    result = _run("--quick", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout), out


@pytest.mark.slow  # the default suite must stay under 10 minutes on 2 cores
def test_quick_run_prints_valid_json_with_every_section(quick):
    result, out = quick
    assert json.loads(out.read_text()) == result  # --out holds the same JSON
    training = result["training"]
    assert training["flops_per_example"] == 2541600  # 3 x 2 x 423,600 MACs of 784-200-200-100 / 50-200-200-784
    tfvae = training["contenders"]["tfvae"]
    assert tfvae["defaults"]["steps_per_execution"] > 1
    assert tfvae["examples_per_second_median"] > 0 and tfvae["gflops_achieved_median"] > 0
    assert "keras_io" in training["contenders"]
    torch = training["contenders"]["torch"]
    assert ("skipped" in torch) or torch["examples_per_second_median"] > 0
    if "skipped" not in torch:
        assert training["ratios"]["tfvae_vs_torch"] > 0
    assert training["ratios"]["tfvae_vs_keras_io"] > 0
    assert result["matmul_peak"]["model_gemms_float32"]["gflops"] > 0
    encode = result["inference"]["encode"]
    for batch in ("batch_1", "batch_256"):
        assert set(encode[batch]) == {"keras_eager", "keras_compiled", "saved_model", "tflite"}
        for row in encode[batch].values():
            assert row["latency_ms_median"] > 0 and row["examples_per_second"] > 0
    assert result["inference"]["speedups"]["tflite_vs_keras_eager_batch_1"] > 0
    assert set(result["targets"]) >= {"training_vs_keras_io", "tflite_vs_keras_eager_batch_1"}


@pytest.mark.slow  # the default suite must stay under 10 minutes on 2 cores
def test_every_number_is_finite(quick):
    result, _ = quick
    numbers = list(_numbers(result))
    assert len(numbers) > 50
    bad = [(path, value) for path, value in numbers if not math.isfinite(value)]
    assert not bad
    rates = [(p, v) for p, v in numbers if p.endswith(("examples_per_second", "gflops", "latency_ms_median"))]
    assert rates and all(v > 0 for _, v in rates)


def test_help_describes_the_benchmark():
    result = _run("--help", timeout=120)
    assert result.returncode == 0
    for option in ("--epochs", "--repeats", "--batch-size", "--examples", "--quick", "--out", "--synthetic"):
        assert option in result.stdout


@pytest.mark.parametrize(
    "args, named",
    [
        (["--epochs", "0"], "--epochs"),
        (["--repeats", "0"], "--repeats"),
        (["--batch-size", "0"], "--batch-size"),
        (["--warmup-epochs", "-1"], "--warmup-epochs"),
        (["--intra-op-threads", "-1"], "--intra-op-threads"),
        (["--examples", "50", "--batch-size", "100"], "--examples"),
        (["--examples", "70000"], "--examples"),
        (["--peers", "jax"], "--peers"),
        (["--inference-seconds", "0"], "--inference-seconds"),
        (["--epochs", "two"], "--epochs"),
        (["--out", "/no/such/dir/result.json"], "--out"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(args, named):
    result = _run(*args, timeout=120)
    assert result.returncode == 2
    assert named in result.stderr
    assert result.stdout == ""
