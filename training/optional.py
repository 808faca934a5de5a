"""The one place that imports optional, heavy dependencies (extras ``gpu``, ``mlflow``,
``s3``).

Everything else asks :func:`has_hummingbird` or calls :func:`hummingbird`,
:func:`mlflow` or :func:`fsspec`; a
missing package becomes a :class:`~kernels.errors.ConfigError` that says which
extra to install, instead of an ``ImportError`` deep inside a call.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

from kernels.errors import ConfigError

__all__ = ["fsspec", "has_hummingbird", "hummingbird", "mlflow"]

_INSTALL = "install `intellilog[gpu]` for {what} (hummingbird-ml and torch are missing: {err})"


def has_hummingbird() -> bool:
    """True when ``hummingbird.ml`` and ``torch`` are installed (nothing is imported)."""
    try:
        return (
            importlib.util.find_spec("torch") is not None
            and importlib.util.find_spec("hummingbird") is not None
            and importlib.util.find_spec("hummingbird.ml") is not None
        )
    except (ImportError, ValueError):
        return False


def hummingbird(what: str = "the hummingbird engine") -> tuple[ModuleType, ModuleType]:
    """Import and return ``(hummingbird.ml, torch)``.

    Raises ConfigError("install `intellilog[gpu]` for <what> ...") when either is
    missing or fails to import.
    """
    try:
        import hummingbird.ml as hb_ml
        import torch
    except Exception as exc:  # ImportError, or a broken binary wheel (OSError, ...)
        raise ConfigError(_INSTALL.format(what=what, err=f"{type(exc).__name__}: {exc}")) from exc
    return hb_ml, torch


_INSTALL_MLFLOW = "install `intellilog[mlflow]` for {what} (mlflow is missing: {err})"


def mlflow(what: str = "MLflow tracking") -> ModuleType:
    """Import and return ``mlflow``.

    Raises ConfigError("install `intellilog[mlflow]` for <what> ...") when it is missing
    or fails to import.
    """
    try:
        import mlflow as mlflow_
    except Exception as exc:  # ImportError, or a broken dependency
        raise ConfigError(
            _INSTALL_MLFLOW.format(what=what, err=f"{type(exc).__name__}: {exc}")
        ) from exc
    return mlflow_


_INSTALL_S3 = "install `intellilog[s3]` for {what} (fsspec is missing: {err})"


def fsspec(what: str = "a remote model registry") -> ModuleType:
    """Import and return ``fsspec``.

    Raises ConfigError("install `intellilog[s3]` for <what> ...") when it is missing or
    fails to import.
    """
    try:
        import fsspec as fsspec_
    except Exception as exc:  # ImportError, or a broken dependency
        raise ConfigError(
            _INSTALL_S3.format(what=what, err=f"{type(exc).__name__}: {exc}")
        ) from exc
    return fsspec_
