"""Pictures of a VAE: grids of images (samples, reconstructions), a 2-D map of the latent space, score histograms.

Every function writes a PNG atomically (a temporary file in the same directory, then a rename), so
an interrupted run never leaves a truncated picture. Matplotlib is used without pyplot: drawing here
never changes the caller's backend or opens a window.

Example:

    plots.image_grid(model.sample(64), "samples.png")
    plots.latent_scatter(model.encode(x_test).mean(), y_test, "latent.png")
"""

import math
import os
import tempfile

import numpy as np

from tfvae import arguments

# Small images are enlarged by whole pixels (nearest neighbour) until a tile is about this wide.
_TILE_PIXELS = 56
_PADDING_VALUE = 0.5  # mid grey: visible between dark and light digits alike


def as_images(images):
    """Returns images as float32 (N, H, W, C) with C in {1, 3}.

    Args:
        images: (N, H, W), (N, H, W, 1), (N, H, W, 3), or flat rows (N, D) with D a square number
            (a square grey image each), e.g. (N, 784) for MNIST.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        side = math.isqrt(images.shape[1])
        if side * side != images.shape[1]:
            raise ValueError(
                f"images: expected flat rows of a square number of pixels, e.g. (N, 784); got shape {images.shape}."
            )
        images = images.reshape(-1, side, side)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(
            f"images: expected a non-empty batch (N, H, W) or (N, H, W, C) with C 1 or 3; got shape {images.shape}."
        )
    return images


def tile(images, ncols=8, scale=None, padding=1):
    """Arranges images in a grid, row by row, enlarged by a whole number of pixels.

    Args:
        images: a batch accepted by `as_images`, values in [0, 1] (others are clipped).
        ncols: images per row; the last row is padded with grey.
        scale: pixels per image pixel; None picks the largest that keeps a tile near 56 pixels.
        padding: grey pixels between tiles and around the grid.

    Returns:
        float32 (height, width, C) in [0, 1], where height = rows * (H * scale + padding) + padding
        and width = ncols * (W * scale + padding) + padding.
    """
    images = np.clip(as_images(images), 0.0, 1.0)
    n, h, w, c = images.shape
    ncols = arguments.positive_int(ncols, "ncols")
    scale = default_scale(h, w) if scale is None else arguments.positive_int(scale, "scale")
    rows = -(-n // ncols)
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    th, tw = h * scale + padding, w * scale + padding
    grid = np.full((rows * th + padding, ncols * tw + padding, c), _PADDING_VALUE, np.float32)
    for i, image in enumerate(images):
        top, left = (i // ncols) * th + padding, (i % ncols) * tw + padding
        grid[top : top + h * scale, left : left + w * scale] = image
    return grid


def default_scale(height, width):
    """The enlargement `tile` uses for images of this size when no scale is given."""
    return max(1, round(_TILE_PIXELS / max(height, width)))


def image_grid(images, path, ncols=8, scale=None, padding=1):
    """Writes images as one PNG grid (see `tile` for the layout and its size in pixels).

    Args:
        images: a batch accepted by `as_images`, values in [0, 1].
        path: the PNG to write; its directory must exist.
        ncols, scale, padding: as in `tile`.

    Returns:
        path.
    """
    from PIL import Image

    grid = np.round(tile(images, ncols, scale, padding) * 255).astype(np.uint8)
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    with _atomic(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def interleave(originals, reconstructions, ncols=8):
    """Rows of originals alternating with rows of their reconstructions, for `image_grid`.

    Args:
        originals, reconstructions: two batches of the same shape.
        ncols: images per row, the `ncols` the grid will use.

    Returns:
        One batch: originals[0:ncols], reconstructions[0:ncols], originals[ncols:2*ncols], ...
        (a short last row is padded with blank images).
    """
    originals, reconstructions = as_images(originals), as_images(reconstructions)
    if originals.shape != reconstructions.shape:
        raise ValueError(
            f"reconstructions: expected the originals' shape {originals.shape}; got {reconstructions.shape}."
        )
    ncols = arguments.positive_int(ncols, "ncols")
    blank = (-len(originals)) % ncols
    pad = np.zeros((blank, *originals.shape[1:]), np.float32)
    rows = [np.concatenate([a, pad]).reshape(-1, ncols, *a.shape[1:]) for a in (originals, reconstructions)]
    return np.stack(rows, axis=1).reshape(-1, *originals.shape[1:])


def latent_scatter(z, labels, path, title=None, size=6.0, dpi=100):
    """Writes a scatter plot of latent codes, coloured by label.

    Codes with more than two dimensions are projected onto their first two principal components
    (the axes then say how much of the variance each explains); one-dimensional codes are drawn
    along a line.

    Args:
        z: (N, latent_dim) codes, e.g. posterior means.
        labels: N integer labels, or None for one colour.
        path: the PNG to write; its directory must exist.
        title: a title for the plot.
        size: width and height in inches; the PNG is `round(size * dpi)` pixels square.
        dpi: pixels per inch.

    Returns:
        path.
    """
    from matplotlib.figure import Figure

    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or len(z) == 0:
        raise ValueError(f"z: expected codes of shape (N, latent_dim); got shape {z.shape}.")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(z):
            raise ValueError(f"labels: expected {len(z)} labels, one per code; got {len(labels)}.")
    xy, axis_names = _two_dimensions(z)

    figure = Figure(figsize=(size, size), dpi=dpi)
    ax = figure.add_subplot()
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.7)
    else:
        classes = np.unique(labels)
        for i, label in enumerate(classes):
            points = xy[labels == label]
            ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.7, color=_color(i, len(classes)), label=str(label))
        if len(classes) <= 20:
            ax.legend(markerscale=3, fontsize="small", loc="best", title="label")
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    if title:
        ax.set_title(title)
    figure.tight_layout()
    with _atomic(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return path


def score_histogram(calibration, scores, path, xlabel="score", labels=("calibration", "input"), size=(7.0, 4.0), dpi=100):
    """Writes overlaid histograms of the calibration data's scores and the inputs' (`tfvae.OutlierDetector`).

    Args:
        calibration: [n] scores of held-out in-distribution data.
        scores: [N] scores of the inputs.
        path: the PNG to write; its directory must exist.
        xlabel: what the scores are.
        labels: the legend's names of the two.

    Returns:
        path.
    """
    from matplotlib.figure import Figure

    groups = [np.asarray(a, dtype=np.float64).reshape(-1) for a in (calibration, scores)]
    for name, values in zip(("calibration", "scores"), groups):
        if len(values) == 0 or not np.isfinite(values).all():
            raise ValueError(f"{name}: expected a non-empty array of finite scores; got {len(values)} values.")
    bins = np.histogram_bin_edges(np.concatenate(groups), bins=50)
    figure = Figure(figsize=size, dpi=dpi)
    ax = figure.add_subplot()
    for i, (values, label) in enumerate(zip(groups, labels)):
        ax.hist(values, bins=bins, density=True, alpha=0.5, color=_color(i, 2), label=f"{label} ({len(values)})")
    ax.set_xlabel(f"{xlabel} (higher = more unlike the data)")
    ax.set_ylabel("density")
    ax.legend(fontsize="small")
    figure.tight_layout()
    with _atomic(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return path


def _two_dimensions(z):
    if z.shape[1] == 1:
        return np.column_stack([z[:, 0], np.zeros(len(z))]), ("z1", "")
    if z.shape[1] == 2:
        return z, ("z1", "z2")
    centred = z - z.mean(axis=0)
    _, singular_values, components = np.linalg.svd(centred, full_matrices=False)
    explained = singular_values**2 / max(np.sum(singular_values**2), np.finfo(float).tiny)
    xy = centred @ components[:2].T
    if xy.shape[1] < 2:  # one code has one component: the second axis is flat
        xy, explained = np.column_stack([xy, np.zeros(len(z))]), np.append(explained, 0.0)
    names = tuple(f"PC{i + 1} ({100 * explained[i]:.0f}% of variance)" for i in range(2))
    return xy, names


def _color(i, n):
    from matplotlib import colormaps

    if n <= 20:
        return colormaps["tab10" if n <= 10 else "tab20"](i)
    return colormaps["viridis"](i / (n - 1))


class _atomic:
    """Yields a temporary path beside `path`; renames it to `path` only if the block succeeds."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def __enter__(self):
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, self.tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=directory)
        os.close(fd)
        return self.tmp

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(self.tmp, 0o666 & ~mask)  # mkstemp's 0600 would make pictures private
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)
