"""Speed of importance-sampled evaluation: tfvae's log p(x) against the PyTorch peer's, and the GEMM limit.

The work is log p(x) with K importance samples for N test images: per example the encoder once,
then K codes through the decoder (784-200-200-50 tanh, Bernoulli). The decoder's GEMMs are nearly
all the FLOPs, so the limit is their GFLOP/s in a graph loop at the row count tfvae's chunks use.
Each contender runs once per round, in a rotating order; medians over rounds are reported.
Part of `benchmarks/throughput.py` (its "evaluation" section).
"""

import statistics
import time

import numpy as np
import tensorflow as tf

import torch_vae

import tfvae
from tfvae import objectives


def decoder_flops_per_sample(input_dim, hidden, latent_dim):
    """FLOPs of one code's pass through the decoder's GEMMs (2 per multiply-add)."""
    widths = [latent_dim, *hidden, input_dim]
    return 2 * sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def chunk_rows(batch_size, input_dim):
    """Rows of one decoder GEMM in tfvae's chunked K loop (see tfvae.objectives.importance_sampled)."""
    return max(1, objectives._CHUNK_ELEMENTS // (batch_size * input_dim)) * batch_size


def gemm_limit(rows, input_dim, hidden, latent_dim, dtype, seconds, time_per_call):
    """GFLOP/s of the decoder's forward GEMMs at `rows` rows, chained in a graph loop of 20 passes."""
    widths = [latent_dim, *hidden, input_dim]
    rng = np.random.default_rng(0)
    weights = [tf.constant(rng.standard_normal((a, b)) / np.sqrt(a), dtype) for a, b in zip(widths[:-1], widths[1:])]
    codes = tf.constant(rng.standard_normal((rows, latent_dim)), dtype)
    passes = 20

    @tf.function
    def loop():
        # Each pass's output feeds a loop variable (one element), so no GEMM is hoisted or pruned.
        def body(step, total):
            h = codes
            for w in weights:
                h = tf.matmul(h, w)
            return step + 1, total + tf.cast(h[0, 0], tf.float32)

        return tf.while_loop(lambda step, _: step < passes, body, [tf.constant(0), tf.constant(0.0)])[1]

    flops = passes * rows * decoder_flops_per_sample(input_dim, hidden, latent_dim)
    return flops / time_per_call(loop, seconds) / 1e9


def benchmark_evaluation(model, x_train, x_test, num_samples, rounds, torch_threads, bf16, seconds,
                         time_per_call, hidden, log):
    """tfvae's `log_prob`, `evaluate.log_likelihood` (float32 and bfloat16) and the PyTorch peer's
    importance-sampled log p(x), on the same binarized test images and K; returns the JSON section.

    Args:
        model: a trained `tfvae.VAE` of the benchmark's architecture (784-200-200-50).
        x_train: float [N, 784] in [0, 1]: the PyTorch peer trains one epoch on it (its speed does
            not depend on the weights; its estimate is printed beside tfvae's as a sanity check).
        x_test: float [M, 784] binary images to score.
        num_samples: K.
        rounds: timed rounds; each contender runs once per round.
        torch_threads: `torch.set_num_threads`; None skips the peer.
        bf16: whether to time the bfloat16 option (a CPU with bfloat16 dot products).
        seconds, time_per_call: for the GEMM limit (see common.time_per_call).
        hidden: the hidden widths.
    """
    input_dim, latent_dim = x_test.shape[1], model.latent_dim
    batch_size = 100
    # The lever: log_prob's graph traced without heads.fused_sums (the likelihood's sum op by op).
    unfused = tf.function(lambda x: objectives.importance_sampled(model, x, num_samples, model.noise)["log_prob"])
    contenders = {
        "tfvae_log_prob": lambda: model.log_prob(x_test, num_samples).numpy(),
        "tfvae_log_prob_unfused_sum": lambda: unfused(tf.constant(x_test)).numpy(),
        "tfvae_evaluate": lambda: tfvae.evaluate.log_likelihood(model, x_test, num_samples, batch_size, verbose=0),
    }
    if bf16:
        contenders["tfvae_evaluate_bfloat16"] = lambda: tfvae.evaluate.log_likelihood(
            model, x_test, num_samples, batch_size, verbose=0, precision="bfloat16")
    versions = {}
    if torch_threads is not None:
        import torch

        torch_model = torch_vae.train(x_train, epochs=1, threads=torch_threads)
        x_torch = torch.from_numpy(x_test)
        contenders["torch"] = lambda: torch_vae.log_prob(torch_model, x_torch, num_samples, batch_size).numpy()
        versions["torch"] = torch.__version__
    answers = {name: run() for name, run in contenders.items()}  # untimed: tracing and allocation
    names = list(contenders)
    times = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            answers[name] = contenders[name]()
            times[name].append(time.perf_counter() - start)
            log(f"evaluation round {round_ + 1}/{rounds} {name}: {times[name][-1]:.2f} s")
    flops = len(x_test) * num_samples * decoder_flops_per_sample(input_dim, hidden, latent_dim)
    result = {}
    for name in names:
        median = statistics.median(times[name])
        answer = answers[name]
        estimate = answer["log_likelihood"] if isinstance(answer, dict) else float(np.mean(answer))
        result[name] = {"seconds_median": median, "seconds": times[name],
                        "samples_per_second": len(x_test) * num_samples / median,
                        "decoder_gflops": flops / median / 1e9, "mean_log_likelihood": estimate}
    rows = chunk_rows(batch_size, input_dim)
    limits = {"float32": gemm_limit(rows, input_dim, hidden, latent_dim, tf.float32, seconds, time_per_call)}
    if bf16:
        limits["bfloat16"] = gemm_limit(rows, input_dim, hidden, latent_dim, tf.bfloat16, seconds, time_per_call)
    section = {
        "what": f"log p(x) with K = {num_samples} importance samples for {len(x_test)} binarized Fashion-MNIST "
                "test images; tfvae: model.log_prob(x, K) on all of them, and tfvae.evaluate.log_likelihood "
                f"(batch {batch_size}); PyTorch: benchmarks/peers/torch_vae.log_prob (batch {batch_size}, "
                "inference_mode, chunks of the same size)",
        "num_samples": num_samples,
        "examples": len(x_test),
        "decoder_flops_per_sample": decoder_flops_per_sample(input_dim, hidden, latent_dim),
        "gemm_limit_gflops": limits,
        "gemm_rows": rows,
        "contenders": result,
        "peer_versions": versions,
    }
    ratios = {}
    for name in names:
        if name.startswith("tfvae"):
            result[name]["fraction_of_float32_gemm_limit"] = result[name]["decoder_gflops"] / limits["float32"]
            if "torch" in result:
                ratios[f"{name}_vs_torch"] = result["torch"]["seconds_median"] / result[name]["seconds_median"]
    ratios["tfvae_log_prob_fused_vs_unfused_sum"] = (result["tfvae_log_prob_unfused_sum"]["seconds_median"]
                                                     / result["tfvae_log_prob"]["seconds_median"])
    if bf16:
        ratios["tfvae_evaluate_bfloat16_vs_float32"] = (result["tfvae_evaluate"]["seconds_median"]
                                                        / result["tfvae_evaluate_bfloat16"]["seconds_median"])
        section["bfloat16_error_nats"] = bfloat16_error(model, x_test, num_samples)
    section["ratios"] = ratios
    return section


def bfloat16_error(model, x, num_samples):
    """log p(x) in bfloat16 minus float32 on the same noise: the mean and largest per-example |difference|."""
    state = model.seed_generator.state.numpy()
    float32 = model.log_prob(x, num_samples).numpy().astype(np.float64)
    model.seed_generator.state.assign(state)
    bfloat16 = model.log_prob(x, num_samples, precision="bfloat16").numpy().astype(np.float64)
    difference = bfloat16 - float32
    return {"mean_difference": float(np.mean(difference)), "max_abs_difference": float(np.max(np.abs(difference))),
            "mean_log_likelihood_float32": float(np.mean(float32))}
