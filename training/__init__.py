"""The ML lifecycle: data, quality checks, training, export, registry."""

__version__ = "0.1.0"
