"""The matmul peak of this machine: the benchmark model's own forward and backward GEMM shapes in a graph
loop, and a square GEMM, against the GFLOP/s training achieves. Part of `throughput.py` ("matmul_peak")."""

import numpy as np
import tensorflow as tf

from common import gemm_shapes, time_per_call


def _gemm_loop(shapes, dtype, iterations):
    """A tf.function running the forward and both backward GEMMs of every layer `iterations` times.

    A graph loop, as training runs them: no Python per iteration.
    """
    rng = np.random.default_rng(0)
    tensors = [[tf.constant(rng.standard_normal(s).astype(np.float32), dtype=dtype)
                for s in ((b, i), (i, o), (b, o))] for b, i, o in shapes]

    @tf.function
    def loop():
        # Each iteration's results feed a loop variable (one element each, a negligible cost), so
        # no GEMM is pruned or hoisted out of the loop as invariant.
        def body(step, total):
            outputs = []
            for x, w, dy in tensors:
                outputs += [tf.matmul(x, w), tf.matmul(dy, w, transpose_b=True), tf.matmul(x, dy, transpose_a=True)]
            return step + 1, total + tf.cast(tf.add_n([o[0, 0] for o in outputs]), tf.float32)

        return tf.while_loop(lambda step, _: step < iterations, body, [tf.constant(0), tf.constant(0.0)])[1]

    return loop


def benchmark_peak(batch_size, seconds, flops_per_example, bf16):
    """GFLOP/s of the model's own GEMMs (a graph loop of forward + backward shapes) and of a square GEMM."""
    shapes = gemm_shapes(batch_size)
    step_flops = sum(3 * 2 * b * i * o for b, i, o in shapes)
    result = {}
    dtypes = [("float32", tf.float32)] + ([("bfloat16", tf.bfloat16)] if bf16 else [])
    for name, dtype in dtypes:
        iterations = 50
        seconds_per_loop = time_per_call(_gemm_loop(shapes, dtype, iterations), seconds)
        gflops = step_flops * iterations / seconds_per_loop / 1e9
        result[f"model_gemms_{name}"] = {
            "gflops": gflops,
            "examples_per_second_limit": gflops * 1e9 / flops_per_example,
            "shapes": [list(s) for s in shapes],
        }
        n = 2048
        a = tf.cast(tf.random.stateless_normal((n, n), seed=[0, 0]), dtype)
        square = tf.function(lambda: tf.matmul(a, a))
        result[f"square_{n}_{name}"] = {"gflops": 2 * n**3 / time_per_call(square, seconds) / 1e9}
    return result
