"""Holdout metrics of a model and of the naive baselines it must beat.

- MAE = mean |y − ŷ|; RMSE = √mean (y − ŷ)²; p90 AE = 90th percentile of |y − ŷ|
- accuracy = share of rows with |y − ŷ| ≤ threshold (default 5 minutes)
- coverage = share of rows with p10 ≤ y ≤ p90 (nominal 80 %); width = mean (p90 − p10)
- baselines: *median* predicts the training median for every row; *distance_speed* predicts
  great-circle km ÷ the training median speed (km per minute).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["BaselineModel", "interval_metrics", "point_metrics"]


def point_metrics(y: np.ndarray, pred: np.ndarray, threshold: float = 5.0) -> dict[str, float]:
    err = np.abs(np.asarray(y, np.float64) - np.asarray(pred, np.float64))
    if err.size == 0:
        return {
            "mae": float("nan"),
            "rmse": float("nan"),
            "p90_ae": float("nan"),
            "accuracy": float("nan"),
            "rows": 0,
        }
    return {
        "mae": float(err.mean()),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "p90_ae": float(np.quantile(err, 0.9)),
        "accuracy": float(np.mean(err <= threshold)),
        "rows": int(err.size),
    }


def interval_metrics(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> dict[str, float]:
    y = np.asarray(y, np.float64)
    if y.size == 0:
        return {"coverage": float("nan"), "width": float("nan")}
    return {
        "coverage": float(np.mean((y >= lo) & (y <= hi))),
        "width": float(np.mean(hi - lo)),
    }


class BaselineModel:
    """The two naive baselines, fitted on the training part only."""

    def __init__(self, median_minutes: float, median_km_per_min: float) -> None:
        self.median_minutes = float(median_minutes)
        self.km_per_min = float(median_km_per_min)

    @classmethod
    def fit(cls, distance_km: np.ndarray, minutes: np.ndarray) -> BaselineModel:
        speed = distance_km / np.maximum(minutes, 1e-6)
        return cls(
            float(np.median(minutes)),
            float(np.median(speed[distance_km > 0.05])) if np.any(distance_km > 0.05) else 0.0,
        )

    def predict_median(self, n: int) -> np.ndarray:
        return np.full(n, self.median_minutes)

    def predict_distance(self, distance_km: np.ndarray) -> np.ndarray:
        if self.km_per_min <= 0:
            return self.predict_median(len(distance_km))
        return distance_km / self.km_per_min

    def to_dict(self) -> dict[str, Any]:
        return {"median_minutes": self.median_minutes, "median_km_per_min": self.km_per_min}

    def evaluate(
        self, distance_km: np.ndarray, y: np.ndarray, threshold: float
    ) -> dict[str, dict[str, float]]:
        return {
            "median": point_metrics(y, self.predict_median(len(y)), threshold),
            "distance_speed": point_metrics(y, self.predict_distance(distance_km), threshold),
        }
