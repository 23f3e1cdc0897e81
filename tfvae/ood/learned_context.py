"""The "learned" coder of binary images: a context model whose rates are counted on in-distribution images.

Each pixel, in raster order, is coded with the probability of a 1 in its context, its 12 causal
neighbours (`TEMPLATE`: two rows above and two pixels to the left, JBIG2's generic region shape),
counted over the images the detector calibrates on: p_c = (ones_c + 1/2) / (seen_c + 1). Such a model
knows the data's local statistics (strokes, edges, texture) and not its shapes, which is what
complexity should subtract from -log2 p(x): on the Fashion-MNIST model of benchmarks/ood.py it lifts
vertically flipped images from AUROC 0.883 (the adaptive "context" coder) to 0.905. Images it codes
worse than the adaptive coder would (noise: it has learned that neighbours agree) are coded by that
one, with a bit to say which: L(x) = min(L_learned, L_adaptive) + 1 bits, a two-part code.

A calibration image is coded with the counts of the other calibration images (leave one out), as a
new image is with those of all of them, so the two are coded alike and the p-values stay conformal.
Everything is counts and gathers in TensorFlow ops (TFLite builtins), so exported graphs run it.
"""

import numpy as np
import tensorflow as tf

from tfvae.ood import coders

TEMPLATE = ((-2, -2), (-2, -1), (-2, 0), (-2, 1), (-2, 2), (-1, -2), (-1, -1), (-1, 0), (-1, 1), (-1, 2), (0, -2), (0, -1))
CONTEXTS = 2 ** len(TEMPLATE)


def contexts(images):
    """The context of every pixel of binary images [B, H, W] (pixels outside the image are 0): int32 [B, H, W]."""
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [2, 0], [2, 2]])
    bits = [padded[:, 2 + dy : 2 + dy + height, 2 + dx : 2 + dx + width] * float(2**i)
            for i, (dy, dx) in enumerate(TEMPLATE)]
    return tf.cast(tf.add_n(bits), tf.int32)


class Counts:
    """The context model: how often each context was seen and held a 1, over the images it has counted.

    Args:
        seen, ones: float64 [CONTEXTS] counts (from `count`, or a saved detector's).
    """

    def __init__(self, seen, ones):
        self.seen, self.ones = np.asarray(seen, np.float64), np.asarray(ones, np.float64)
        if self.seen.shape != (CONTEXTS,) or self.ones.shape != (CONTEXTS,):
            raise ValueError(f"counts: expected {CONTEXTS} contexts; got {self.seen.shape} and {self.ones.shape}.")

    @classmethod
    def count(cls, batches):
        """The counts over binary images, given in batches [B, ...] (each checked by `coders.image_size`)."""
        seen, ones = np.zeros(CONTEXTS), np.zeros(CONTEXTS)
        for x in batches:
            images = _images(x, tf.float64)
            c = tf.reshape(contexts(images), [-1])
            seen += tf.math.bincount(c, minlength=CONTEXTS, maxlength=CONTEXTS, dtype=tf.float64).numpy()
            ones += tf.math.bincount(c, weights=tf.reshape(images, [-1]), minlength=CONTEXTS,
                                     maxlength=CONTEXTS).numpy()
        return cls(seen, ones)

    def code_lengths(self, x, leave_out=False, dtype=tf.float64):
        """L(x) in bits of binary images x [B, ...]: the two-part code of the learned and the adaptive coder, [B].

        Args:
            leave_out: whether each image of x is one of those counted, to be coded without its own counts.
            dtype: float64 eagerly; float32 in exported graphs.
        """
        images = _images(x, dtype)
        c = contexts(images)
        seen, ones = tf.gather(tf.constant(self.seen, dtype), c), tf.gather(tf.constant(self.ones, dtype), c)
        if leave_out:
            own_seen, own_ones = _own_counts(images, c)
            seen, ones = seen - own_seen, ones - own_ones
        p = (ones + 0.5) / (seen + 1.0)
        learned = -tf.reduce_sum(images * tf.math.log(p) + (1.0 - images) * tf.math.log(1.0 - p), axis=[1, 2])
        learned /= tf.constant(np.log(2.0), dtype)
        adaptive = tf.cast(coders.context_code_lengths(images, images.shape[1:]), dtype)
        return tf.minimum(learned, adaptive) + 1.0

    def get_config(self):
        return {"seen": self.seen.tolist(), "ones": self.ones.tolist()}


def _images(x, dtype):
    height, width = coders.image_size(x.shape[1:])
    return tf.reshape(tf.cast(x, dtype), [-1, height, width])


def _own_counts(images, c):
    """Each pixel's context's counts within its own image: ([B, H, W], [B, H, W])."""
    batch = tf.shape(images)[0]
    rows = tf.range(batch)[:, None, None] * CONTEXTS + c  # one segment per (image, context)
    seen = tf.math.unsorted_segment_sum(tf.ones_like(images), rows, batch * CONTEXTS)
    ones = tf.math.unsorted_segment_sum(images, rows, batch * CONTEXTS)
    return tf.gather(seen, rows), tf.gather(ones, rows)
