"""Fruits! image features at scale: read → featurize → reduce → write, on Spark."""

__version__ = "0.1.0"

__all__ = ["__version__"]
