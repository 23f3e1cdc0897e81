"""tfvae.sources: folders of images, TFRecord, CSV and memory-mapped arrays, streamed through one pipeline.

Every example of the fixtures carries its own index in its values (an image's first two pixels are
index // 256 and index % 256; a CSV row's first feature is its index), so the tests can say which
examples an epoch read, and the numbers the decoding must give are known exactly.
"""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfvae import data, sources

N = 300  # examples in each fixture


def _images(n=N, size=(8, 8)):
    """uint8 images whose pixels 0 and 1 spell the index; the rest a fixed pattern of grey levels."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, *size), dtype=np.uint8)
    x[:, 0, 0], x[:, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
    return x


def _index(x):
    """The index spelled by each example's first two pixels (x scaled to [0, 1])."""
    flat = np.rint(np.asarray(x).reshape(len(x), -1) * 255).astype(int)
    return flat[:, 0] * 256 + flat[:, 1]


def _png_example(image, label):
    png = tf.io.encode_png(image[..., None]).numpy()
    return tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))})).SerializeToString()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same N images (labels index % 3) as a folder with class subfolders, 3 TFRecord files, a CSV,
    an .npy and an .npz."""
    root = tmp_path_factory.mktemp("sources")
    x, y = _images(), np.arange(N) % 3
    for i, (image, label) in enumerate(zip(x, y)):
        os.makedirs(root / "folder" / f"class{label}", exist_ok=True)
        Image.fromarray(image).save(root / "folder" / f"class{label}" / f"{i:04d}.png")
    os.makedirs(root / "records")
    for part in range(3):
        with tf.io.TFRecordWriter(str(root / "records" / f"part-{part}.tfrecord")) as writer:
            for i in range(part, N, 3):
                writer.write(_png_example(x[i], int(y[i])))
    with open(root / "table.csv", "w") as f:
        f.write("index,count,label\n" + "".join(f"{i},{i % 7},{y[i]}\n" for i in range(N)))
    np.save(root / "images.npy", x)
    np.savez(root / "images.npz", x=x, y=y)
    return root, x, y


def _epoch(ds):
    return np.concatenate([(b[0] if isinstance(b, tuple) else b).numpy() for b in ds])


@pytest.mark.parametrize("kind", ["folder", "records", "npy"])
def test_every_kind_reads_the_images_exactly_and_splits_them_once(files, kind):
    root, x, y = files
    path = {"folder": root / "folder", "records": root / "records", "npy": root / "images.npy"}[kind]
    source = sources.open(path)
    assert source.event_shape == (8, 8, 1)
    assert source.size("train") + source.size("test") == source.size("all") == N
    whole, labels = source.read("all")
    indices = _index(whole)
    np.testing.assert_array_equal(np.sort(indices), np.arange(N))  # every image once
    np.testing.assert_array_equal(whole[..., 0], x[indices] / np.float32(255))  # lossless, scaled by 255
    if kind != "npy":
        np.testing.assert_array_equal(labels, y[indices])
    train, test = (_index(source.read(split)[0]) for split in ("train", "test"))
    assert not set(train) & set(test) and len(train) + len(test) == N
    # About 1 in 6 by the hash (arrays: exactly the last N // 6): within 4 standard deviations of N / 6.
    assert abs(len(test) - N / 6) <= 4 * np.sqrt(N * (1 / 6) * (5 / 6))


def test_the_split_is_a_function_of_each_files_relative_path(files, tmp_path):
    root, _, _ = files
    moved = tmp_path / "elsewhere"
    shutil.copytree(root / "folder", moved)
    os.makedirs(moved / "class0" / "new")
    shutil.copy(moved / "class0" / "0000.png", moved / "class0" / "new" / "extra.png")  # one file more
    before, after = sources.open(root / "folder"), sources.open(moved)
    assert set(before.names("test")) == set(after.names("test")) - {"class0/new/extra.png"}
    assert after.class_names == ["class0", "class1", "class2"]


@pytest.mark.parametrize("kind", ["folder", "records", "csv", "npz"])
def test_an_epoch_reads_every_training_example_once_in_a_fresh_seeded_order(files, kind):
    root, _, _ = files
    path = {"folder": "folder", "records": "records", "csv": "table.csv", "npz": "images.npz"}[kind]
    source = sources.open(root / path)
    ds = source.dataset("train", batch_size=32, seed=5)
    assert ds.cardinality() == -(-source.size("train") // 32)  # the progress bar's steps

    def indices(epoch):
        return epoch[:, 0] if kind == "csv" else _index(epoch)

    first, second = indices(_epoch(ds)), indices(_epoch(ds))
    expected = np.sort(indices(source.read("train")[0]))
    np.testing.assert_array_equal(np.sort(first), expected)
    np.testing.assert_array_equal(np.sort(second), expected)
    assert (first != second).any()  # each epoch its own order
    # The same seed, the same epochs; an iterator made and dropped moves it on one epoch, as a resume does.
    again = source.dataset("train", batch_size=32, seed=5)
    np.testing.assert_array_equal(indices(_epoch(again)), first)
    data.skip_iterations(again, 0)
    resumed = data.skip_iterations(source.dataset("train", batch_size=32, seed=5), 1)
    np.testing.assert_array_equal(indices(_epoch(resumed)), second)


@pytest.mark.parametrize("kind", ["folder", "records", "csv", "npy"])
def test_shards_of_two_workers_are_disjoint_and_together_the_split(files, kind):
    root, _, _ = files
    path = {"folder": "folder", "records": "records", "csv": "table.csv", "npy": "images.npy"}[kind]
    source = sources.open(root / path)
    seen = []
    for index in range(2):
        ds = source.dataset("train", batch_size=16, seed=3, shard=(2, index))
        epoch = _epoch(ds)
        seen.append(epoch[:, 0] if kind == "csv" else _index(epoch))
        assert ds.cardinality() == -(-len(seen[-1]) // 16)
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) + len(seen[1]) == source.size("train")
    if kind == "records":  # 3 files over 2 workers: by file, worker 0 reads files 0 and 2 (indices 0, 2 mod 3)
        assert set(np.asarray(seen[0]) % 3) == {0, 2} and set(np.asarray(seen[1]) % 3) == {1}


def test_dynamic_draws_are_bernoulli_of_the_grey_levels_and_static_ones_fixed_per_example(files):
    source = sources.open(files[0] / "images.npy")
    grey, _ = source.read("train")
    binarized = source.dataset("train", 50, "dynamic", shuffle=False, seed=1)
    draws = np.stack([_epoch(binarized) for _ in range(20)])  # 20 epochs
    assert set(np.unique(draws)) == {0.0, 1.0}
    # 20 draws per pixel: the mean is the grey level within 5 standard errors of a Bernoulli(p) mean.
    p = grey.mean()
    assert abs(draws.mean() - p) < 5 * np.sqrt(p * (1 - p) / draws.size)
    assert (draws[0] != draws[1]).any()
    static = source.read("test", binarization="static", seed=9)[0]
    batched = _epoch(source.dataset("test", 7, "static", shuffle=False, seed=9))
    np.testing.assert_array_equal(static, batched)  # the draw of an example is its own, not its batch's
    np.testing.assert_array_equal(static, source.read("test", binarization="static", seed=9)[0])
    assert (static != source.read("test", binarization="static", seed=10)[0]).any()


def test_labels_come_as_ints_or_one_hot(files):
    source = sources.open(files[0] / "folder")
    x, one_hot = next(iter(source.dataset("train", 10, labels="one_hot", shuffle=False)))
    assert one_hot.shape == (10, 3)
    np.testing.assert_array_equal(np.argmax(one_hot, axis=1), _index(x.numpy()) % 3)
    with pytest.raises(ValueError, match="labels: .*images.npy has no labels"):
        sources.open(files[0] / "images.npy").dataset(labels="int")


def test_arrays_are_memory_mapped_and_compressed_npz_read_whole(files, tmp_path):
    root, x, y = files
    source = sources.open(root / "images.npz")
    assert isinstance(source._x["train"], np.memmap) and source.classes == 3
    assert source.size("test") == N // 6  # the last N // 6 rows, as tfvae.data.load splits them
    np.testing.assert_array_equal(source.read("test")[1], y[-(N // 6):])
    np.savez_compressed(tmp_path / "small.npz", x_train=x[:200], x_test=x[200:])
    compressed = sources.open(tmp_path / "small.npz")
    assert compressed.size("train") == 200 and not isinstance(compressed._x["train"], np.memmap)
    np.testing.assert_array_equal(compressed.read("test")[0][..., 0], x[200:] / np.float32(255))


def test_a_16_bit_rgba_and_colour_images_are_converted_never_clipped(tmp_path):
    folder = tmp_path / "mixed"
    os.makedirs(folder)
    wide = np.full((4, 4), 51000, np.uint16)
    Image.fromarray(wide).save(folder / "a16.png")
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 7
    Image.fromarray(rgba).save(folder / "b_rgba.png")
    Image.fromarray(np.full((4, 4), 90, np.uint8)).save(folder / "c.bmp")
    Image.fromarray(np.full((4, 4), 60, np.uint8)).save(folder / "d.gif")
    Image.fromarray(np.full((4, 4), 120, np.uint8)).save(folder / "e.jpg", quality=95)
    grey = sources.open(folder, channels=1)
    x, _ = grey.read("all")
    names = grey.names("all")
    np.testing.assert_allclose(x[names.index("d.gif")], 60 / 255, rtol=1e-6)  # a palette, looked up
    np.testing.assert_allclose(x[names.index("e.jpg")], 120 / 255, atol=1.5 / 255)  # lossy: within a level
    np.testing.assert_allclose(x[names.index("a16.png")], 51000 / 65535, rtol=1e-6)  # 16-bit: by 65535
    np.testing.assert_allclose(x[names.index("b_rgba.png")], 200 / 255, rtol=1e-6)  # alpha dropped, grey kept
    np.testing.assert_allclose(x[names.index("c.bmp")], 90 / 255, rtol=1e-6)
    colour = sources.open(folder)  # an RGBA image: the source is RGB
    assert colour.event_shape == (4, 4, 3)
    np.testing.assert_allclose(colour.read("all")[0][names.index("a16.png")], 51000 / 65535, rtol=1e-6)


def test_images_of_different_sizes_are_refused_naming_two_or_resized(tmp_path):
    folder = tmp_path / "sizes"
    os.makedirs(folder)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((6, 10), 255, np.uint8)).save(folder / "b.png")
    with pytest.raises(ValueError, match=r"different sizes: .*a.png is 8x8, .*b.png is 10x6.*--image-size"):
        sources.open(folder)
    resized = sources.open(folder, image_size=(5, 7))
    assert resized.event_shape == (5, 7, 1)
    np.testing.assert_allclose(resized.read("all")[0][1], 1.0)


def test_a_corrupt_image_is_refused_naming_it_or_skipped_and_counted(files, tmp_path):
    folder = tmp_path / "corrupt"
    shutil.copytree(files[0] / "folder" / "class1", folder)
    with open(folder / "0004.png", "r+b") as f:
        f.truncate(30)
    listing = sorted(os.listdir(folder))
    with pytest.raises(ValueError, match=r"0004.png: cannot read the image .*Pass skip_bad_files=True"):
        sources.open(folder)
    source = sources.open(folder, skip_bad_files=True)
    assert source.skipped == 1 and source.size("all") == len(listing) - 1
    assert sorted(os.listdir(folder)) == listing  # nothing written into the user's folder


@pytest.mark.parametrize("make, message", [
    (lambda p: os.makedirs(p / "empty"), r"empty: no images"),
    (lambda p: None, r"matches no TFRecord files"),
    (lambda p: (p / "bad.csv").write_text("a,b\n1,2\n3,x\n"),
     r"bad.csv, line 3, column 'b': expected a number \(within float32's range\); got 'x'"),
    (lambda p: (p / "labels.csv").write_text("a,label\n1,2.5\n"), r"line 2, column 'label': expected a class label"),
    (lambda p: (p / "short.csv").write_text("a,b\n1\n"), r"line 2: expected 2 cells"),
])
def test_bad_sources_are_refused_naming_the_place(tmp_path, make, message):
    make(tmp_path)
    path = {r"empty: no images": "empty", r"matches no TFRecord files": "none-*.tfrecord"}.get(
        message, next((n for n in os.listdir(tmp_path) if n.endswith(".csv")), ""))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        sources.open(tmp_path / path)


def test_a_tfrecord_without_an_image_lists_the_features_it_has(tmp_path):
    path = str(tmp_path / "other.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(tf.train.Example(features=tf.train.Features(feature={
            "pixels": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"])),
            "class": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))})).SerializeToString())
    with pytest.raises(ValueError, match=r"feature 'image'; the records have class, pixels"):
        sources.open(path)


def test_a_separate_test_dataset_is_the_test_split(files):
    root, _, _ = files
    source = sources.open(root / "folder", test=root / "records")
    assert source.size("train") == source.size("test") == N
    assert source.describe()["test_source"] == str(root / "records")
    with pytest.raises(ValueError, match=r"test: expected examples of shape \(8, 8, 1\)"):
        sources.open(root / "folder", test=root / "table.csv")


def test_kinds_are_told_without_tensorflow(files):
    root, _, _ = files
    assert [sources.kind_of(root / p) for p in ("folder", "records", "table.csv", "images.npy")] == [
        "images", "tfrecord", "csv", "array"]
    assert sources.kind_of(str(root / "records" / "*.tfrecord")) == "tfrecord"
    assert sources.kind_of("digits") == "bundled"
    with pytest.raises(FileNotFoundError, match="no such file"):
        sources.kind_of(root / "missing.npy")
    with pytest.raises(ValueError, match="expected one of digits"):
        sources.kind_of(root / "table.txt")


def test_a_split_without_examples_says_to_give_a_test_split(tmp_path):
    os.makedirs(tmp_path / "one")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "one" / "only.png")
    source = sources.open(tmp_path / "one")
    empty = "train" if source.size("test") else "test"
    message = rf"split: .*one has no {empty} examples: .* all 1 are in the other.*test=PATH"
    with pytest.raises(ValueError, match=message):
        source.dataset(empty)
