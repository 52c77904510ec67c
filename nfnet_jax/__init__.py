"""nfnet-jax: Normalizer-Free networks, Adaptive Gradient Clipping and their training pipeline."""

__version__ = "0.1.0"
