"""tfvae's resource rule: what a request may ask of the machine, decided before any work starts.

The rule has two parts.

1. Memory. A request's memory is estimated, in bytes, from its largest arrays: the model's
   parameters (four float32 copies when training: weights, gradients and Adam's two moments), the
   activations of one step, and the outputs it keeps. If the estimate exceeds the memory the
   machine has available (MemAvailable in /proc/meminfo, else its free physical pages), the
   request is refused with both numbers in the message. The estimates count only the largest
   arrays, so a refused request would certainly not fit; one that passes may still be tight.
2. Work. Long work runs in steps whose memory is bounded and reports progress after each step
   (a Keras progress bar). One step may compute at most `STEP_ELEMENTS` decoder outputs
   (examples x samples x output values per example, about a minute on two CPU cores), so the
   bar keeps moving; work that cannot be cut into such steps (the K samples of one example, or
   the silent parity check of an export) is refused above that size, with the estimate.

Everything here is plain Python and numpy, so it can be called before TensorFlow is imported.

Example:

    resources.check_memory(resources.model_bytes((784,), 10**9), "latent_dim=1000000000")
    # ResourceError: latent_dim=1000000000: would need ~9,632 GB of memory; this machine has ~23 GB ...
"""

import math
import os

FLOAT_BYTES = 4  # float32
# Decoder outputs one step may compute between two progress updates: ~2.1e9.
STEP_ELEMENTS = 2**31
MLP_UNITS = (200, 200)  # tfvae.networks.MLP's default hidden widths
GATED_MLP_UNITS = (300, 300)  # tfvae.networks.GatedMLP's; each layer has two products (value and gate)
CONV_UNITS = 256  # tfvae.networks.ConvEncoder's dense width
CONV_FILTERS = (32, 64)  # per layer; each halves the height and width
# Float32 copies of each parameter while training with Adam: weights, gradients, two moments.
_TRAINING_COPIES = 4
# Float32 copies of each activation in a training step: the forward value, its gradient, a temporary.
_ACTIVATION_COPIES = 3
# Bytes per value of a picture: plots.tile enlarges in two float32 copies into a float32 grid, rounded
# in another, then 8-bit.
_PICTURE_BYTES = 4 * FLOAT_BYTES + 1


class ResourceError(ValueError):
    """A request that would not fit the machine's memory or the work rule; the message has the estimate."""


def available_bytes():
    """The memory this machine can give a new allocation without swapping, in bytes (None if unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def gigabytes(nbytes):
    """Bytes as a short human figure: '~0.05 GB', '~3.2 GB', '~9,632 GB'."""
    value = nbytes / 1e9
    return f"~{value:.2g} GB" if value < 10 else f"~{value:,.0f} GB"


def check_memory(nbytes, request, available=None):
    """Raises `ResourceError` if `nbytes` exceed the available memory.

    Args:
        nbytes: the request's estimated memory in bytes.
        request: what was asked, as the user typed it, e.g. "--latent-dim 1000000000"; the message
            starts with it.
        available: bytes available; None reads them from the machine (`available_bytes`).
    """
    available = available_bytes() if available is None else available
    if available is not None and nbytes > available:
        raise ResourceError(
            f"{request}: would need {gigabytes(nbytes)} of memory; this machine has "
            f"{gigabytes(available)} available (see Limits in docs/cli.md)."
        )


def check_step(elements, request):
    """Raises `ResourceError` if one step without progress would compute more than `STEP_ELEMENTS` outputs.

    Args:
        elements: decoder outputs of the indivisible step (examples x samples x outputs per example).
        request: what was asked, as the user typed it; the message starts with it.
    """
    if elements > STEP_ELEMENTS:
        raise ResourceError(
            f"{request}: one step without progress would compute {elements:.2g} decoder outputs; the limit is "
            f"{STEP_ELEMENTS:.2g}, about a minute of work (see Limits in docs/cli.md)."
        )


def examples_per_step(num_samples, event_size, batch_size):
    """The batch of examples to take at once, at most `batch_size`, so a step of `num_samples` each stays
    within `STEP_ELEMENTS`; at least 1 (call `check_step` for the one-example step first)."""
    return max(1, min(batch_size, STEP_ELEMENTS // (num_samples * event_size)))


def parameter_count(event_shape, latent_dim, architecture="mlp"):
    """The parameters of a tfvae VAE with the `tfvae.networks` bodies, to within their small layers.

    Args:
        event_shape: the shape of one x, e.g. (28, 28, 1).
        latent_dim: the dimension of z.
        architecture: "mlp", "gated_mlp" or "conv" (encoder and decoder alike).
    """
    event_size = math.prod(event_shape)
    if architecture == "conv":
        height, width = event_shape[0], event_shape[1]
        feature_map = (height >> len(CONV_FILTERS)) * (width >> len(CONV_FILTERS)) * CONV_FILTERS[-1]
        encoder = feature_map * CONV_UNITS + CONV_UNITS * 2 * latent_dim
        decoder = latent_dim * feature_map + CONV_FILTERS[0] * event_shape[-1]
        return encoder + decoder
    units, gates = (GATED_MLP_UNITS, 2) if architecture == "gated_mlp" else (MLP_UNITS, 1)

    def stack(widths):  # hidden layers (doubled by gates) and the head's plain dense layer
        hidden = sum(gates * (a + 1) * b for a, b in zip(widths[:-2], widths[1:-1]))
        return hidden + (widths[-2] + 1) * widths[-1]

    # q(z|x): a location and a scale per dimension
    return stack([event_size, *units, 2 * latent_dim]) + stack([latent_dim, *units, event_size])


def activations_per_sample(event_shape, latent_dim, architecture="mlp"):
    """Float32 values one sample of z keeps through a forward pass: hidden layers, z, p(x|z)'s parameters."""
    event_size = math.prod(event_shape)
    if architecture == "conv":
        height, width = event_shape[0], event_shape[1]
        maps = sum((height >> i) * (width >> i) * f for i, f in enumerate(CONV_FILTERS, start=1))
        hidden = 2 * maps + CONV_UNITS  # encoder and decoder feature maps
    elif architecture == "gated_mlp":
        hidden = 2 * 3 * sum(GATED_MLP_UNITS)  # per layer: value, gate and their product
    else:
        hidden = 2 * sum(MLP_UNITS)
    return hidden + 3 * latent_dim + event_size


def model_bytes(event_shape, latent_dim, architecture="mlp"):
    """Estimated bytes of a model's weights while it trains: weights, gradients and Adam's two moments."""
    return FLOAT_BYTES * _TRAINING_COPIES * parameter_count(event_shape, latent_dim, architecture)


def step_bytes(event_shape, latent_dim, architecture, batch_size, num_samples):
    """Estimated bytes of one training step's activations: batch_size x num_samples samples of z,
    each with its forward values and their gradients."""
    per_sample = activations_per_sample(event_shape, latent_dim, architecture)
    return FLOAT_BYTES * _ACTIVATION_COPIES * batch_size * num_samples * per_sample


def sampling_bytes(num_samples, event_shape, latent_dim, picture_pixels=0):
    """Estimated bytes of decoding `num_samples` draws of z at once and keeping them, plus a picture
    of `picture_pixels` values per sample (a PNG grid of them)."""
    per_sample = latent_dim + 2 * sum(MLP_UNITS) + 3 * math.prod(event_shape)
    return num_samples * (FLOAT_BYTES * per_sample + _PICTURE_BYTES * picture_pixels)
