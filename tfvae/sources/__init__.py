"""Users' own data as `tf.data` streams: folders of images, TFRecord files, CSV tables and large arrays.

    source = tfvae.sources.open("photos/", image_size=(28, 28))
    model = tfvae.VAE(input_shape=source.event_shape, latent_dim=16)
    model.fit(source.dataset("train", batch_size=128, binarization="dynamic", seed=0), epochs=10)
    x_test, y_test = source.read("test")

A source is read a batch at a time, never whole: files are decoded in parallel as they are needed
and `.npy`/`.npz` arrays are memory-mapped. Opening one reads it once to check it (every image
decodes, every CSV cell is a number, every array value is finite) and to count it, so that a bad file
is refused (or skipped, with `skip_bad_files=True`) before training starts, not an hour into it, and
the progress bar knows each epoch's steps.

What each path is:
- a folder: images (PNG, JPEG, BMP, GIF), found recursively. When every image lies in a subfolder,
  the top-level subfolders are the classes, labelled 0, 1, ... in sorted order (as
  `keras.utils.image_dataset_from_directory` reads them). 8-bit and 16-bit images are scaled to
  [0, 1] by their bit depth; an alpha channel is dropped; the source is grey unless an image has
  colour, and then RGB (grey images repeated over the three channels). All images must have one
  size unless `image_size` resizes them (bilinear).
- `.tfrecord` files (a path, a glob, or a folder of them): `tf.train.Example`s with an encoded image
  under `image` and an optional int64 `label`, as TFDS writes them; images as in a folder.
- `.csv`: a header row, then one example per row; a column named `label` is the label, every other
  column a feature.
- `.npy`, `.npz`: memory-mapped (an `.npz` of `np.savez_compressed` cannot be, and is read whole);
  integer pixels 0..255 are divided by 255 and uint16 ones by 65535, as `tfvae.data.load` reads them.
- `digits`, `mnist-5k`, `fashion_mnist`, `mnist`: the bundled datasets, in memory (`tfvae.data.load`).

The test split is the same on every machine and does not move when files are added:
- folders, TFRecord and CSV: an example is a test example when the FarmHash fingerprint of its key,
  modulo 6, is 0 (about one in six); the key is an image's path relative to the folder, a record's
  "file:index" (the file relative to the pattern's folder), a CSV row's index from 0 as text;
- arrays: `x_train`/`x_test` of an `.npz`, or the last N // 6 rows of a single array;
- with `test=PATH`, every example of the source trains and PATH (a source too) is the test split.
"""

import os

KINDS = ("images", "tfrecord", "csv", "array", "bundled")
BUNDLED = ("digits", "mnist-5k", "fashion_mnist", "mnist")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
TEST_BUCKETS = 6  # one bucket of six is the test split


def kind_of(path):
    """The kind of source `path` names (one of `KINDS`), without importing TensorFlow; a ValueError or
    FileNotFoundError naming it when it is none."""
    path = os.fspath(path)
    if path in BUNDLED:
        return "bundled"
    lower = path.lower()
    if lower.endswith((".npy", ".npz")):
        kind = "array"
    elif lower.endswith(".csv"):
        kind = "csv"
    elif ".tfrecord" in os.path.basename(lower) or any(c in path for c in "*?["):
        return "tfrecord"  # a glob may match nothing yet: opening it says so
    elif os.path.isdir(path):
        return "tfrecord" if _holds_records(path) else "images"
    else:
        missing = "" if os.path.exists(path) else ", which does not exist"
        raise ValueError(f"expected one of {', '.join(BUNDLED)}, a folder of images, .tfrecord files, a .csv, "
                         f".npy or .npz file; got {path!r}{missing}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file or folder {path!r}.")
    return kind


def open(path, image_size=None, test=None, skip_bad_files=False, channels=None, data_dir=None):  # noqa: A001
    """Opens (and checks) the source at `path`; see the module's docstring for what it may be.

    Args:
        path: a folder, a TFRecord path or glob, a .csv, .npy or .npz file, or a bundled dataset's name.
        image_size: (height, width) to resize images to; None keeps their own size, which must then be
            one. Only for images (folders, TFRecord).
        test: another source's path whose every example is the test split; this one then all trains.
        skip_bad_files: skip images that do not decode (and count them: `source.skipped`) instead of
            refusing the source.
        channels: 1 or 3 to convert images to grey or RGB; None: grey unless an image has colour.
        data_dir: where the bundled idx datasets are (`tfvae.data.load`).

    Returns:
        A `tfvae.sources.stream.Source`.
    """
    kind = kind_of(path)
    path = os.fspath(path)
    if kind not in ("images", "tfrecord"):
        for name, value in (("image_size", image_size), ("channels", channels)):
            if value is not None:
                raise ValueError(f"{name}: {path} is a {kind} source, not images; got {name}={value!r}.")
    if kind == "bundled":
        from tfvae.sources.memory import Bundled

        source = Bundled(path, data_dir)
    elif kind == "array":
        from tfvae.sources.arrays import ArrayFile

        source = ArrayFile(path)
    elif kind == "csv":
        from tfvae.sources.tables import CSVTable

        source = CSVTable(path)
    else:
        from tfvae.sources import images, records

        options = dict(image_size=images.image_size(image_size), skip_bad_files=skip_bad_files,
                       channels=images.channel_count(channels))
        source = (images.ImageFolder if kind == "images" else records.RecordFiles)(path, **options)
    if test is not None:  # as images of the same size and channels, when they are images
        images = kind_of(test) in ("images", "tfrecord")
        held_out = open(test, image_size=image_size if images else None, skip_bad_files=skip_bad_files,
                        channels=getattr(source, "channels", None) if images else None, data_dir=data_dir)
        source = source.with_test(held_out)
    return source


def _holds_records(folder):
    return any(".tfrecord" in name.lower() for name in os.listdir(folder))
