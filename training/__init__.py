"""The ML lifecycle: data, quality checks, training, export, registry."""
