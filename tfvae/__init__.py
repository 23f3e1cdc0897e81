"""tfvae: variational autoencoders for TensorFlow/Keras, with TFP distributions and export to TFLite."""

from tfvae import callbacks, data, distributions, evaluate, export, inference, networks, objectives, training
from tfvae.model import VAE

__all__ = [
    "VAE",
    "callbacks",
    "data",
    "distributions",
    "evaluate",
    "export",
    "inference",
    "networks",
    "objectives",
    "training",
]
__version__ = "0.1.0"
