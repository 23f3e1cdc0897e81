from setuptools import find_packages, setup

setup(
    name="tfvae",
    version="0.1.0",
    description="Variational autoencoders for TensorFlow/Keras: density estimation, inference, export.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tfvae", "tfvae.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.20",
        # tfvae.distribute replaces pieces of Keras's TensorFlow trainer (tests/test_distribute.py tests
        # each one it relies on); tested with 3.15.
        "keras>=3.15,<3.16",
        # The [tf] extra brings tf_keras, which TFP 0.25 imports at import time.
        "tensorflow-probability[tf]>=0.25",
        "numpy",
        "scikit-learn",
        "mlxtend",
        "matplotlib",
        "pillow",
        "ai-edge-litert",
        # TensorFlow 2.21 no longer brings it; keras.callbacks.TensorBoard (used by `tfvae train`) needs it.
        "tensorboard",
    ],
    extras_require={
        # PSIS k-hat of importance weights (tfvae.evaluate.log_prob_estimate's pareto_k; NaN without it).
        "diagnostics": ["arviz-stats"],
        # pytest-xdist: the suite runs its files on two worker processes (pytest.ini).
        "test": ["pytest", "hypothesis", "pytest-xdist", "arviz-stats"],
        "bench": ["torch==2.13.0"],
    },
    entry_points={"console_scripts": ["tfvae = tfvae.cli:main"]},
)
