"""The feature contract: spec, request structs and numba feature kernels."""

from kernels.errors import (
    ConfigError,
    DataError,
    InferenceError,
    IntelliLogError,
    ModelLoadError,
    SpecError,
    StoreError,
)
from kernels.features import UNKNOWN, Columns, Pipeline
from kernels.spec import Categorical, FeatureSpec, Numeric, default_spec, load_spec, parse_spec

__all__ = [
    "UNKNOWN",
    "Categorical",
    "Columns",
    "ConfigError",
    "DataError",
    "FeatureSpec",
    "InferenceError",
    "IntelliLogError",
    "ModelLoadError",
    "Numeric",
    "Pipeline",
    "SpecError",
    "StoreError",
    "default_spec",
    "load_spec",
    "parse_spec",
]
