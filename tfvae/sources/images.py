"""Images: a folder of image files read as they are needed, and the decoding that TFRecord images share."""

import numbers
import os

import numpy as np
import tensorflow as tf

from tfvae.sources import IMAGE_SUFFIXES, stream


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHUNK_BYTES = 2**20  # decoded images (float32) read in one tf.data element
IMAGES_AT_ONCE = 16  # images of a batch decoded at once (tf.map_fn's parallel_iterations)
SKIP_ADVICE = "Pass skip_bad_files=True to skip them"
# Pillow's limit on decoded pixels (twice Image.MAX_IMAGE_PIXELS, where it refuses), against decompression bombs.
MAX_PIXELS = 2 * (1024 * 1024 * 1024 // 4 // 3)
# ITU-R 601 luma, as Pillow converts RGB to "L": they sum to 1, so a grey pixel stays its grey level
# (tf.image.rgb_to_grayscale's 0.2989 + 0.587 + 0.114 make 200/255 into 0.78424).
LUMA = (0.299, 0.587, 0.114)


def image_size(value):
    """`image_size` as (height, width) of positive ints, or None: an int is a square's side."""
    if value is None:
        return None
    sides = (value, value) if isinstance(value, numbers.Integral) else tuple(value) if _is_pair(value) else None
    if sides is None or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in sides):
        raise ValueError(f"image_size: expected a positive int or (height, width) of positive ints; got {value!r}.")
    return tuple(int(s) for s in sides)


def channel_count(value):
    if value not in (None, 1, 3):
        raise ValueError(f"channels: expected 1 (grey), 3 (RGB) or None (as the images are); got {value!r}.")
    return value


def guarded(contents):
    """`contents`, after asserting that the size its header claims is at most MAX_PIXELS: a decompression
    bomb (a small file claiming a huge image) fails here instead of allocating it."""
    check = tf.debugging.assert_less_equal(claimed_pixels(contents), tf.constant(MAX_PIXELS, tf.int64),
                                           message="the image is too large to decode")
    with tf.control_dependencies([check]):
        return tf.identity(contents)


def claimed_pixels(contents):
    """Width x height as a PNG, GIF, BMP or JPEG header says (0 for anything else: the decoder decides)."""
    header = tf.strings.substr(tf.strings.join([contents, "\0" * 26]), 0, 26)

    def product(start, dtype, little_endian):  # two numbers of `dtype` from byte `start`
        size = tf.io.decode_raw(tf.strings.substr(header, start, 2 * dtype.size), dtype, little_endian=little_endian)
        return tf.reduce_prod(tf.abs(tf.cast(size, tf.int64)))

    def starts(signature):
        return tf.strings.substr(header, 0, len(signature)) == signature

    return tf.case([(starts(PNG_SIGNATURE), lambda: product(16, tf.int32, False)),
                    (starts(b"GIF8"), lambda: product(6, tf.uint16, True)),
                    (starts(b"BM"), lambda: product(18, tf.int32, True)),
                    (starts(b"\xff\xd8"), lambda: tf.reduce_prod(tf.io.extract_jpeg_shape(contents, tf.int64)[:2]))],
                   default=lambda: tf.constant(0, tf.int64))


def decode(contents, channels, size):
    """An encoded image (PNG, JPEG, BMP, GIF's first frame) as float32 (height, width, channels) in [0, 1].

    Each file is scaled by its own bit depth, 16-bit PNGs by 65535 and the rest by 255, with one
    exact division (as `tfvae.data.load` divides an array), so nothing is clipped. An alpha channel is
    dropped; grey and colour are converted to `channels` (colour to grey by the `LUMA` weights);
    `size` = (height, width) resizes bilinearly.
    """
    contents = guarded(contents)
    x = tf.cond(is_wide(contents), lambda: tf.cast(tf.io.decode_png(contents, dtype=tf.uint16), tf.float32) / 65535.0,
                lambda: tf.cast(tf.io.decode_image(contents, expand_animations=False), tf.float32) / 255.0)
    native = tf.shape(x)[-1]
    x = x[..., : native - tf.cast(native % 2 == 0, tf.int32)]  # grey+alpha (2) and RGBA (4) lose the alpha
    if channels == 1:
        x = tf.cond(tf.shape(x)[-1] == 3, lambda: tf.tensordot(x, LUMA, axes=1)[..., tf.newaxis], lambda: x)
    else:
        x = tf.cond(tf.shape(x)[-1] == 1, lambda: tf.tile(x, [1, 1, 3]), lambda: x)
    if size is not None:
        x = tf.image.resize(x, size, method="bilinear")
    return x


def scan(encoded, count):
    """Decodes every image once: (shapes [count, 4] of height, width, channels before conversion and
    whether it is a 16-bit PNG; the indices that do not decode). `encoded` is a dataset of (index,
    contents) pairs."""
    shapes = np.full((count, 4), -1, np.int64)

    def probe(i, contents):
        shape = tf.shape(tf.io.decode_image(guarded(contents), expand_animations=False), out_type=tf.int64)
        return i, tf.concat([shape, [tf.cast(is_wide(contents), tf.int64)]], 0)

    for indices, batch in encoded.map(probe, num_parallel_calls=stream.PARALLEL_CALLS).ignore_errors().batch(
            4096).as_numpy_iterator():
        shapes[indices] = batch
    return shapes, np.flatnonzero(shapes[:, 0] < 0)


def batch_decoder(shapes, channels, size, event_shape, read=tf.identity):
    """A function from a batch of files (`read` turns one into its encoded bytes) to the float32 batch
    of their images, for images of these scanned `shapes`.

    One tf.data element per batch, the images decoded by a `tf.map_fn` within it: per image, tf.data's
    own work was more than reading and decoding a 28x28 PNG (16,800 images/s by image, 36,700 by batch
    on 2 cores). When every image is 8-bit with the source's channels and size, it stays uint8 until its
    batch is converted at once; otherwise each goes through `decode`.
    """
    plain = size is None and not shapes[:, 3].any() and (shapes[:, 2] == channels).all()
    dtype = tf.uint8 if plain else tf.float32

    def one(item):
        contents = read(item)
        x = tf.io.decode_image(contents, expand_animations=False) if plain else decode(contents, channels, size)
        return tf.ensure_shape(x, event_shape)

    def decode_batch(items):
        x = tf.map_fn(one, items, fn_output_signature=tf.TensorSpec(event_shape, dtype),
                      parallel_iterations=IMAGES_AT_ONCE)
        return tf.cast(x, tf.float32) / 255.0 if plain else x

    return decode_batch


def is_wide(contents):
    """Whether an encoded image is a 16-bit PNG: its bit depth is byte 24, after the 8-byte signature and
    the IHDR chunk's length, type, width and height."""
    header = tf.strings.substr(tf.strings.join([contents, "\0" * 25]), 0, 25)
    return tf.logical_and(tf.strings.substr(header, 0, 8) == PNG_SIGNATURE, tf.strings.substr(header, 24, 1) == "\x10")


def checked_shape(shapes, names, size, channels, source):
    """The source's event shape from its images' shapes, or a ValueError naming two files of different sizes."""
    if not len(shapes):
        raise ValueError(f"{source}: no image could be read.")
    if channels is None:
        channels = 3 if np.isin(shapes[:, 2], (3, 4)).any() else 1
    if size is None:
        different = np.flatnonzero((shapes[:, :2] != shapes[0, :2]).any(axis=1))
        if different.size:
            j = different[0]
            raise ValueError(f"{source}: images of different sizes: {names[0]} is {shapes[0, 1]}x{shapes[0, 0]}, "
                             f"{names[j]} is {shapes[j, 1]}x{shapes[j, 0]} (width x height); resize them all with "
                             f"image_size (--image-size H[,W]).")
        size = tuple(int(s) for s in shapes[0, :2])
    return (*size, channels), channels


def refuse_or_skip(bad, names, reason, skip_bad_files, source):
    """Raises naming the first unreadable image unless `skip_bad_files`; then tells how many are skipped."""
    if not len(bad):
        return 0
    if not skip_bad_files:
        raise ValueError(f"{names[bad[0]]}: cannot read the image ({reason(bad[0])}); {len(bad)} of the {len(names)} "
                         f"images in {source} do not decode. {SKIP_ADVICE}.")
    print(f"{source}: skipping {len(bad)} unreadable image{'s' * (len(bad) != 1)} of {len(names)}, the first "
          f"{names[bad[0]]}.", flush=True)
    return len(bad)


def decode_error(contents):
    """Why an encoded image does not decode, in a line."""
    claimed = int(claimed_pixels(contents))
    if claimed > MAX_PIXELS:
        return f"it is too large: its header claims {claimed} pixels, more than the {MAX_PIXELS} an image may have"
    try:
        tf.io.decode_image(contents, expand_animations=False)
    except (tf.errors.InvalidArgumentError, ValueError) as e:
        return getattr(e, "message", str(e)).strip().splitlines()[0]
    return "it decodes now"


class ImageFolder(stream.Source):
    """A folder of images, recursively; the top-level subfolders are the classes when every image lies
    in one (see `tfvae.sources`)."""

    kind = "images"
    split_rule = "FarmHash fingerprint of the image's relative path mod 6 == 0 is test"

    def __init__(self, folder, image_size=None, skip_bad_files=False, channels=None):
        self.path = folder
        names = _image_names(folder)
        if not names:
            raise ValueError(f"{folder}: no images ({', '.join(s[1:].upper() for s in IMAGE_SUFFIXES)}) in the folder "
                             f"or its subfolders.")
        files = np.array([os.path.join(folder, n) for n in names])
        shapes, bad = scan(tf.data.Dataset.from_tensor_slices((np.arange(len(files)), files)).map(
            lambda i, path: (i, tf.io.read_file(path))), len(files))
        self.skipped = refuse_or_skip(bad, files, lambda i: decode_error(tf.io.read_file(files[i])), skip_bad_files,
                                      folder)
        good = np.setdiff1d(np.arange(len(files)), bad)
        self.event_shape, self.channels = checked_shape(shapes[good], files[good], image_size, channels, folder)
        self._decode = batch_decoder(shapes[good], self.channels, image_size, self.event_shape, tf.io.read_file)
        tops = [n.split("/", 1)[0] if "/" in n else None for n in names]
        self.class_names = sorted({t for t in tops if t is not None}) if all(t is not None for t in tops) else None
        self.classes = None if self.class_names is None else len(self.class_names)
        index = {name: i for i, name in enumerate(self.class_names or ())}
        self._labels = np.array([index.get(t, -1) for t in tops], np.int64)
        self._files, self._names = files, np.array(names)
        test = stream.split_of(tf.constant(names)).numpy()
        self._units = {"train": good[~test[good]], "test": good[test[good]], "all": good}

    def size(self, split):
        return len(self._units[split])

    def names(self, split):
        return list(self._names[self._units[split]])

    def _batches(self, split, batch_size, pair, shard, drop_remainder):
        units = self._units[split]
        files, labels = tf.constant(self._files[units]), tf.constant(self._labels[units])
        ids = tf.constant(units.astype(np.int64))  # an image's index among the folder's images, sorted
        decode = self._decode

        def load(i):
            return decode(tf.gather(files, i)), tf.gather(ids, i), tf.gather(labels, i)

        # Decoded in chunks of at least CHUNK_BYTES, then batched: small batches cost tf.data more per image.
        chunk = max(batch_size, CHUNK_BYTES // (4 * int(np.prod(self.event_shape))))
        order = tf.data.Dataset.from_tensor_slices(stream.ordered(len(units), pair, shard))
        chunks = order.batch(chunk, drop_remainder and chunk == batch_size)
        chunks = chunks.map(load, num_parallel_calls=stream.PARALLEL_CALLS)
        return chunks if chunk == batch_size else chunks.unbatch().batch(batch_size, drop_remainder)


def _image_names(folder):
    """The folder's image files as paths relative to it (with "/"), in sorted order, subfolders included."""
    names = []
    for directory, subfolders, files in os.walk(folder):
        subfolders.sort()
        relative = os.path.relpath(directory, folder)
        for name in sorted(files):
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                names.append(name if relative == "." else f"{relative}/{name}".replace(os.sep, "/"))
    return sorted(names)


def _is_pair(value):
    try:
        return len(value) == 2 and not isinstance(value, str)
    except TypeError:
        return False
