"""anima: config-driven training, tracking and serving of small persona chat models."""

__version__ = "0.1.0"
