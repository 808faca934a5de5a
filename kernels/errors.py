"""The error hierarchy shared by every layer. No HTTP in here: the server maps
these to status codes in one table."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "InferenceError",
    "IntelliLogError",
    "ModelLoadError",
    "SpecError",
    "StoreError",
]


class IntelliLogError(Exception):
    """Base of every error the product raises on purpose. The message says what
    was wrong, where, and how to fix it."""


class ConfigError(IntelliLogError):
    """A setting (environment variable, CLI flag) has a bad value."""


class SpecError(IntelliLogError):
    """A feature spec is malformed, or data does not fit it."""


class DataError(IntelliLogError):
    """An input file is unreadable, empty, or misses columns the spec needs."""


class ModelLoadError(IntelliLogError):
    """A model artifact is missing, corrupted, tampered with, or incompatible."""


class InferenceError(IntelliLogError):
    """A prediction could not be computed for the given input."""


class StoreError(IntelliLogError):
    """The prediction/feedback store failed."""
