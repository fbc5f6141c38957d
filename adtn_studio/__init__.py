"""ADTN Studio: compress neural networks with deep tensor networks."""

__version__ = "0.1.0"
