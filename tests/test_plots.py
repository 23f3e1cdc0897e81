import os

import numpy as np
import pytest
from PIL import Image

from tfvae import plots


def test_image_grid_writes_a_png_of_the_documented_size(tmp_path):
    images = np.random.default_rng(0).uniform(size=(10, 8, 8))
    path = plots.image_grid(images, tmp_path / "grid.png", ncols=4, scale=3, padding=1)

    with Image.open(path) as png:
        # 3 rows of 4 tiles of 24 pixels, 1 pixel of padding between and around them.
        assert png.format == "PNG"
        assert png.size == (4 * 25 + 1, 3 * 25 + 1)
        assert png.mode == "L"
    assert os.listdir(tmp_path) == ["grid.png"]  # no temporary file left behind


def test_tile_places_each_image_enlarged_in_row_major_order():
    images = np.stack([np.full((2, 2), v) for v in (0.0, 0.25, 1.0)])
    grid = plots.tile(images, ncols=2, scale=2, padding=1)

    assert grid.shape == (2 * 5 + 1, 2 * 5 + 1, 1)
    np.testing.assert_array_equal(grid[1:5, 1:5, 0], 0.0)
    np.testing.assert_array_equal(grid[1:5, 6:10, 0], 0.25)
    np.testing.assert_array_equal(grid[6:10, 1:5, 0], 1.0)
    np.testing.assert_array_equal(grid[0, :, 0], 0.5)  # padding
    np.testing.assert_array_equal(grid[6:10, 6:10, 0], 0.5)  # the missing fourth image


@pytest.mark.parametrize(
    "shape, expected",
    [((3, 784), (3, 28, 28, 1)), ((3, 5, 6), (3, 5, 6, 1)), ((3, 5, 6, 1), (3, 5, 6, 1)), ((3, 5, 6, 3), (3, 5, 6, 3))],
)
def test_as_images_accepts_flat_square_rows_grey_and_rgb(shape, expected):
    assert plots.as_images(np.zeros(shape)).shape == expected


@pytest.mark.parametrize("shape", [(3, 10), (3, 4, 4, 2), (0, 4, 4), (4,)])
def test_as_images_rejects_what_is_not_a_batch_of_images(shape):
    with pytest.raises(ValueError, match="images: expected"):
        plots.as_images(np.zeros(shape))


def test_default_scale_makes_small_and_mnist_sized_tiles_about_56_pixels():
    assert plots.default_scale(8, 8) == 7
    assert plots.default_scale(28, 28) == 2
    assert plots.default_scale(100, 60) == 1


def test_rgb_grid_is_an_rgb_png(tmp_path):
    path = plots.image_grid(np.ones((2, 4, 4, 3)), tmp_path / "rgb.png", ncols=2, scale=1, padding=0)
    with Image.open(path) as png:
        assert png.mode == "RGB" and png.size == (8, 4)


def test_interleave_alternates_rows_of_originals_and_reconstructions():
    originals = np.arange(5).reshape(5, 1, 1, 1) * np.ones((5, 2, 2, 1))
    rows = plots.interleave(originals, originals + 10, ncols=3)

    assert rows.shape == (12, 2, 2, 1)
    np.testing.assert_array_equal(rows[:, 0, 0, 0], [0, 1, 2, 10, 11, 12, 3, 4, 0, 13, 14, 0])


def test_interleave_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="reconstructions: expected the originals' shape"):
        plots.interleave(np.zeros((4, 3, 3)), np.zeros((3, 3, 3)))


@pytest.mark.parametrize("latent_dim", [1, 2, 5])
def test_latent_scatter_writes_a_square_png_for_any_latent_dimension(tmp_path, latent_dim):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, latent_dim))
    path = plots.latent_scatter(z, rng.integers(0, 10, 200), tmp_path / "latent.png", title="test", size=4, dpi=50)

    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (200, 200)


def test_latent_scatter_without_labels(tmp_path):
    path = plots.latent_scatter(np.random.default_rng(0).normal(size=(50, 3)), None, tmp_path / "z.png")
    with Image.open(path) as png:
        assert png.size == (600, 600)


def test_latent_scatter_projects_onto_the_directions_of_largest_variance():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 4)) * [0.01, 5.0, 0.01, 1.0]
    xy, names = plots._two_dimensions(z)

    assert abs(np.corrcoef(xy[:, 0], z[:, 1])[0, 1]) > 0.99
    assert abs(np.corrcoef(xy[:, 1], z[:, 3])[0, 1]) > 0.99
    assert names[0].startswith("PC1 (96%")


def test_latent_scatter_rejects_mismatched_labels(tmp_path):
    with pytest.raises(ValueError, match="labels: expected 10 labels"):
        plots.latent_scatter(np.zeros((10, 2)), np.zeros(9), tmp_path / "z.png")
    assert os.listdir(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "grid.png"
    target.write_bytes(b"previous picture")

    def disk_full(self, fp, *args, **kwargs):
        open(fp, "wb").write(b"half a pic")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(OSError):
        plots.image_grid(np.zeros((2, 3, 3)), target)
    assert target.read_bytes() == b"previous picture"
    assert os.listdir(tmp_path) == ["grid.png"]


def test_image_grids_callback_draws_samples_and_reconstructions_each_epoch(tmp_path, digits):
    import tfvae

    train, test = digits
    model = tfvae.VAE(input_shape=(8, 8, 1), latent_dim=2)
    x = test[:12].reshape(-1, 8, 8, 1)
    grids = tfvae.callbacks.ImageGrids(tmp_path, x=x, ncols=4, num_samples=8, log_dir=tmp_path / "logs")
    model.fit(train.reshape(-1, 8, 8, 1), epochs=2, batch_size=500, verbose=0, callbacks=[grids])

    tile = 8 * plots.default_scale(8, 8) + 1
    with Image.open(tmp_path / "samples.png") as png:
        assert png.size == (4 * tile + 1, 2 * tile + 1)  # 8 samples in rows of 4
    with Image.open(tmp_path / "reconstructions.png") as png:
        assert png.size == (4 * tile + 1, 6 * tile + 1)  # 3 rows of originals, 3 of reconstructions
    events = os.listdir(tmp_path / "logs" / "images")
    assert len(events) == 1 and events[0].startswith("events.out.tfevents")


def test_image_grids_callback_refuses_a_missing_folder_and_bad_images_before_training(tmp_path, digits):
    import tfvae

    model = tfvae.VAE(input_shape=(64,), latent_dim=2)
    (tmp_path / "file.txt").write_text("kept")
    for directory, what in ((tmp_path / "file.txt", "a file"), (tmp_path / "none", "not found")):
        grids = tfvae.callbacks.ImageGrids(directory, num_samples=4)
        with pytest.raises(NotADirectoryError, match=f"directory: expected an existing directory for the grids; "
                                                     f"got '{directory}', {what}."):
            model.fit(digits[0], epochs=1, batch_size=500, verbose=0, callbacks=[grids])
    grids = tfvae.callbacks.ImageGrids(tmp_path, x=digits[1][:4, :63], num_samples=4)
    with pytest.raises(ValueError, match=r"x: expected a batch of shape \(batch, 64\); got shape \(4, 63\)"):
        model.fit(digits[0], epochs=1, batch_size=500, verbose=0, callbacks=[grids])
    assert int(model.optimizer.iterations) == 0  # refused before the first step
    assert sorted(os.listdir(tmp_path)) == ["file.txt"] and (tmp_path / "file.txt").read_text() == "kept"


def test_image_grids_callback_draws_the_last_epoch_even_between_intervals(tmp_path, digits):
    import tfvae

    model = tfvae.VAE(input_shape=(64,), latent_dim=2)
    grids = tfvae.callbacks.ImageGrids(tmp_path, every=5, num_samples=4)
    model.fit(digits[0], epochs=2, batch_size=500, verbose=0, callbacks=[grids])

    assert sorted(os.listdir(tmp_path)) == ["samples.png"]
