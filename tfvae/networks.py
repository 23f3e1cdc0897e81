"""Encoder and decoder bodies: serializable Keras layers from x to features and from z to features.

A body knows nothing of distributions: the heads in `tfvae.heads` turn its features into
q(z|x) or p(x|z). Any Keras layer or model can stand in for these.
"""

import keras
import numpy as np


class _Stack(keras.layers.Layer):
    """Layers in `self.hidden`, each with `units`, applied in turn to inputs flattened to vectors."""

    def build(self, input_shape):
        shape = (input_shape[0], int(np.prod(input_shape[1:])))
        for layer in self.hidden:
            layer.build(shape)
            shape = (shape[0], layer.units)

    def call(self, x):
        h = keras.ops.reshape(x, (-1, int(np.prod(x.shape[1:]))))
        for layer in self.hidden:
            h = layer(h)
        return h


@keras.saving.register_keras_serializable(package="tfvae")
class MLP(_Stack):
    """A stack of dense layers; inputs of any shape are flattened first.

    Args:
        units: widths of the hidden layers, e.g. [200, 200] (Burda et al. 2015).
        activation: activation of every hidden layer.

    Example:
        >>> body = MLP(units=[200, 200], activation="tanh")
        >>> features = body(x)  # [batch, 200]
    """

    def __init__(self, units=(200, 200), activation="tanh", **kwargs):
        super().__init__(**kwargs)
        self.units = [int(u) for u in units]
        self.activation = activation
        self.hidden = [
            keras.layers.Dense(u, activation=activation, name=f"dense_{i}") for i, u in enumerate(self.units)
        ]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation}


@keras.saving.register_keras_serializable(package="tfvae")
class GatedDense(keras.layers.Layer):
    """h = (W1 x + b1) * sigmoid(W2 x + b2): a dense layer whose units a learned gate scales (the
    GatedDense of Tomczak & Welling's VampPrior code, without an activation on h as used there).

    One dense layer computes both halves: a single matmul of twice the width.

    Args:
        units: width of h.
    """

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.dense = keras.layers.Dense(2 * self.units, name="dense")

    def get_config(self):
        return {**super().get_config(), "units": self.units}

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, x):
        h, gate = keras.ops.split(self.dense(x), 2, axis=-1)
        return h * keras.ops.sigmoid(gate)


@keras.saving.register_keras_serializable(package="tfvae")
class GatedMLP(_Stack):
    """A stack of GatedDense layers; inputs of any shape are flattened first.

    Args:
        units: widths of the layers, e.g. [300, 300] (VampPrior's and Exemplar VAE's MLP models).

    Example:
        >>> model = tfvae.VAE(input_shape=(784,), encoder="gated_mlp", decoder="gated_mlp")
    """

    def __init__(self, units=(300, 300), **kwargs):
        super().__init__(**kwargs)
        self.units = [int(u) for u in units]
        self.hidden = [GatedDense(u, name=f"gated_dense_{i}") for i, u in enumerate(self.units)]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="tfvae")
class ConvEncoder(keras.layers.Layer):
    """Strided 3x3 convolutions that halve the image per layer, then one dense layer.

    Args:
        filters: channels of each convolution, e.g. (32, 64) takes 28x28 to 7x7.
        units: width of the final dense layer.
        activation: activation of every layer.
    """

    def __init__(self, filters=(32, 64), units=256, activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.filters = [int(f) for f in filters]
        self.units = int(units)
        self.activation = activation
        self.convolutions = [
            keras.layers.Conv2D(f, 3, strides=2, padding="same", activation=activation, name=f"conv_{i}")
            for i, f in enumerate(self.filters)
        ]
        self.dense = keras.layers.Dense(self.units, activation=activation, name="dense")

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "units": self.units,
            "activation": self.activation,
        }

    def call(self, x):
        if len(x.shape) != 4:
            raise ValueError(f"x: ConvEncoder expects images (batch, height, width, channels); got shape {x.shape}.")
        h = x
        for layer in self.convolutions:
            h = layer(h)
        return self.dense(keras.ops.reshape(h, (-1, int(np.prod(h.shape[1:])))))


@keras.saving.register_keras_serializable(package="tfvae")
class ConvDecoder(keras.layers.Layer):
    """A dense layer to a small feature map, then transposed convolutions that double it per layer.

    Its output keeps the image's spatial shape; the likelihood head maps its channels to x's.

    Args:
        image_size: (height, width) of x; each must be divisible by 2 ** len(filters).
        filters: channels of each transposed convolution, e.g. (64, 32) takes 7x7 to 28x28.
        activation: activation of every layer.
    """

    def __init__(self, image_size, filters=(64, 32), activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.image_size = [int(s) for s in image_size]
        self.filters = [int(f) for f in filters]
        self.activation = activation
        stride = 2 ** len(self.filters)
        if len(self.image_size) != 2 or any(s % stride for s in self.image_size):
            raise ValueError(
                f"image_size: expected (height, width) each divisible by {stride} for {len(self.filters)} "
                f"upsampling layers; got {tuple(image_size)}."
            )
        self.seed_shape = (self.image_size[0] // stride, self.image_size[1] // stride, self.filters[0])
        self.dense = keras.layers.Dense(int(np.prod(self.seed_shape)), activation=activation, name="dense")
        self.deconvolutions = [
            keras.layers.Conv2DTranspose(f, 3, strides=2, padding="same", activation=activation, name=f"deconv_{i}")
            for i, f in enumerate(self.filters)
        ]

    def get_config(self):
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "filters": self.filters,
            "activation": self.activation,
        }

    def call(self, z):
        h = keras.ops.reshape(self.dense(z), (-1, *self.seed_shape))
        for layer in self.deconvolutions:
            h = layer(h)
        return h


@keras.saving.register_keras_serializable(package="tfvae")
class Bottom(keras.layers.Layer):
    """A decoder body that reads z_1 alone of a hierarchy's z = [z_1, ..., z_L]: p(x|z_1), as in Burda et al.'s
    (2015) two-layer model. What follows z in its input (a conditional model's condition) is kept.

    Args:
        latent_dims: (d_1, ..., d_L), the model's layers, bottom first.
        body: the Keras layer that z_1 (and the condition) go through.

    Example:
        >>> decoder = Bottom((100, 50), MLP([100, 100]))   # p(x|z_1) of z_1 [100], z_2 [50]
    """

    def __init__(self, latent_dims, body, **kwargs):
        super().__init__(**kwargs)
        self.latent_dims = [int(d) for d in latent_dims]
        self.body = keras.saving.deserialize_keras_object(body) if isinstance(body, dict) else body

    def get_config(self):
        return {**super().get_config(), "latent_dims": self.latent_dims,
                "body": keras.saving.serialize_keras_object(self.body)}

    def build(self, input_shape):
        if not self.body.built:  # a body deserialized from a .keras file comes built
            self.body.build((input_shape[0], input_shape[-1] - sum(self.latent_dims[1:])))

    def call(self, z):
        return self.body(keras.ops.concatenate([z[..., : self.latent_dims[0]], z[..., sum(self.latent_dims) :]], -1))


def get(spec, role, event_shape):
    """The body for `role` ("encoder" or "decoder") of a model over x of shape `event_shape`.

    Args:
        spec: None or "mlp" (MLP [200, 200] tanh), "gated_mlp" (GatedMLP [300, 300]), "conv"
            (convolutional, for images), or a Keras layer.
        role: "encoder" or "decoder", also the argument name in error messages.
        event_shape: shape of one x; "conv" needs (height, width, channels).
    """
    if isinstance(spec, keras.layers.Layer):
        return spec
    if spec is None or spec == "mlp":
        return MLP()
    if spec == "gated_mlp":
        return GatedMLP()
    if spec == "conv":
        if len(event_shape) != 3:
            raise ValueError(
                f"{role}: 'conv' expects images, input_shape (height, width, channels); got input_shape {event_shape}."
            )
        return ConvEncoder() if role == "encoder" else ConvDecoder(image_size=event_shape[:2])
    raise ValueError(f"{role}: expected None, 'mlp', 'gated_mlp', 'conv' or a keras.layers.Layer; got {spec!r}.")
