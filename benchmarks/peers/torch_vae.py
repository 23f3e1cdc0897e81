"""Plain-PyTorch peer for tfvae's throughput benchmark.

The Burda et al. (2015) one-stochastic-layer VAE (encoder 784-200-200-(2x50) tanh, Gaussian
posterior by log-variance, N(0, I) prior with analytic KL, Bernoulli decoder 50-200-200-784 by
logits), trained with Adam(1e-3) on dynamically binarized data, written the way a competent
PyTorch user writes it: an `nn.Module` and a hand-written loop over shuffled in-memory batches.

    python benchmarks/peers/torch_vae.py --epochs 3 --repeats 3

Prints one JSON object; `run(...)` returns the same dict to `benchmarks/throughput.py`.
torch is imported lazily so this module imports without it.
"""

import math
import time

try:
    from . import _common
except ImportError:  # run as a script, or imported with benchmarks/peers on sys.path
    import _common

PEER = "pytorch"


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError('The PyTorch peer needs torch: pip install -e ".[bench]"') from e
    return torch


def _build_vae(torch, x_dim, hidden=200, z_dim=50):
    nn, F = torch.nn, torch.nn.functional

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(
                nn.Linear(x_dim, hidden), nn.Tanh(),
                nn.Linear(hidden, hidden), nn.Tanh(),
                nn.Linear(hidden, 2 * z_dim))
            self.decoder = nn.Sequential(
                nn.Linear(z_dim, hidden), nn.Tanh(),
                nn.Linear(hidden, hidden), nn.Tanh(),
                nn.Linear(hidden, x_dim))

        def forward(self, x):
            """Mean negative ELBO per example, in nats."""
            z_mean, z_log_var = self.encoder(x).chunk(2, dim=-1)
            z = z_mean + torch.exp(0.5 * z_log_var) * torch.randn_like(z_mean)
            logits = self.decoder(z)
            reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = -0.5 * torch.sum(1 + z_log_var - z_mean.square() - z_log_var.exp())
            return (reconstruction + kl) / len(x)

    return VAE()


def _train_once(torch, x, epochs, batch_size, warmup_epochs, compile):
    model = _build_vae(torch, x.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = torch.compile(model) if compile else model
    n = len(x)
    epoch_seconds, epoch_losses = [], []
    for epoch in range(warmup_epochs + epochs):
        start = time.perf_counter()
        total, batches = 0.0, 0
        for idx in torch.randperm(n).split(batch_size):
            x_batch = torch.bernoulli(x[idx])  # dynamic binarization: a fresh draw every visit
            loss = step(x_batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
        if epoch >= warmup_epochs:
            epoch_seconds.append(time.perf_counter() - start)
            epoch_losses.append(total / batches)
    return {
        "examples_per_second": n * epochs / sum(epoch_seconds),
        "final_loss": epoch_losses[-1],
        "epoch_seconds": epoch_seconds,
    }


# Importance samples per chunk: a chunk's decoder output holds about this many floats, as in tfvae.
CHUNK_ELEMENTS = 2**23


def log_prob(model, x, num_samples, batch_size=100):
    """The importance-weighted estimate of log p(x) with K = num_samples, [N] nats, as a PyTorch user
    writes it: under `torch.inference_mode`, per batch the encoder once, then chunks of the K samples
    through the decoder, log w = log p(x|z) + log p(z) - log q(z|x), and a log-sum-exp over K.

    Args:
        model: a VAE from `train` (or `_build_vae`).
        x: float tensor [N, D] of binary pixels.
        num_samples: K.
        batch_size: examples per batch.
    """
    torch = _import_torch()
    F, normal = torch.nn.functional, torch.distributions.Normal
    out = []
    with torch.inference_mode():
        for xb in x.split(batch_size):
            z_mean, z_log_var = model.encoder(xb).chunk(2, dim=-1)
            q = normal(z_mean, torch.exp(0.5 * z_log_var))
            chunk = max(1, CHUNK_ELEMENTS // (len(xb) * xb.shape[1]))
            log_w = []
            for start in range(0, num_samples, chunk):
                z = q.sample((min(chunk, num_samples - start),))  # [k, B, z_dim]
                logits = model.decoder(z)
                log_likelihood = -F.binary_cross_entropy_with_logits(
                    logits, xb.expand_as(logits), reduction="none").sum(-1)
                log_prior = (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).sum(-1)
                log_w.append(log_likelihood + log_prior - q.log_prob(z).sum(-1))
            out.append(torch.logsumexp(torch.cat(log_w), dim=0) - math.log(num_samples))
    return torch.cat(out)


def train(x, epochs=1, batch_size=100, threads=2, seed=0):
    """A VAE trained `epochs` epochs on float array x [N, D] (for `log_prob`)."""
    torch = _import_torch()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = _build_vae(torch, x.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(_common.check_x(x, batch_size))
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(batch_size):
            loss = model(torch.bernoulli(x[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def run(x, epochs, batch_size=100, warmup_epochs=1, repeats=3, threads=2, compile=False, seed=0):
    """Trains a fresh VAE `repeats` times and returns training throughput and loss.

    Args:
        x: float array [N, D] in [0, 1]; binarized afresh every step.
        epochs: timed epochs per repeat.
        batch_size: examples per step.
        warmup_epochs: untimed epochs first (allocator and kernel warm-up; compilation with `compile`).
        repeats: independent runs, each with a fresh model; the medians summarize them.
        threads: `torch.set_num_threads` value (a process-wide setting).
        compile: wrap the model in `torch.compile` (off by default: plain eager PyTorch is the peer).
        seed: `torch.manual_seed(seed + repeat)` for each repeat.

    Returns:
        dict with peer, examples_per_second_median, final_loss_median (mean negative ELBO per
        example in nats over the last epoch), runs (one dict per repeat: examples_per_second,
        final_loss, epoch_seconds), threads, versions, batch_size, epochs, warmup_epochs, examples.
    """
    torch = _import_torch()
    x = _common.check_x(x, batch_size)
    if epochs < 1 or repeats < 1 or warmup_epochs < 0 or threads < 1:
        raise ValueError(f"need epochs >= 1, repeats >= 1, warmup_epochs >= 0, threads >= 1; got "
                         f"{epochs}, {repeats}, {warmup_epochs}, {threads}")
    torch.set_num_threads(threads)
    x = torch.from_numpy(x)
    runs = []
    for repeat in range(repeats):
        torch.manual_seed(seed + repeat)
        runs.append(_train_once(torch, x, epochs, batch_size, warmup_epochs, compile))
    versions = {"torch": torch.__version__}
    return _common.summarize(f"{PEER}+compile" if compile else PEER, runs, threads, versions,
                             batch_size, epochs, warmup_epochs, len(x))


def main(argv=None):
    parser = _common.make_parser(__doc__.split("\n\n")[0], threads_default=2,
                                 threads_help="torch.set_num_threads (default 2)")
    parser.add_argument("--compile", action="store_true", help="wrap the model in torch.compile")
    args = _common.parse_args(parser, argv)
    try:
        _import_torch()
    except ImportError as e:
        parser.exit(1, f"{e}\n")
    try:
        x = _common.check_x(_common.load_data(args.data, args.examples, args.seed), args.batch_size)
    except ValueError as e:
        parser.error(f"--examples/--data: {e}")
    _common.print_json(run(x, args.epochs, args.batch_size, args.warmup_epochs, args.repeats,
                           threads=args.threads, compile=args.compile, seed=args.seed))


if __name__ == "__main__":
    main()
