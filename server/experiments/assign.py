"""Sticky assignment of orders to experiment arms.

An order goes to the candidate when ``h(experiment_id, order_id) < split``, where ``h`` is
the first 8 bytes of BLAKE2b over ``experiment_id``, a NUL byte and ``order_id``, read as
an unsigned integer and divided by 2**64 (uniform on [0, 1)). The same order always lands
in the same arm of one experiment, on every worker and replica, after restarts, with no
state; another experiment reshuffles (its id is part of the hash). Rows without an order
id go to the baseline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = ["assign", "assign_many", "unit_hash"]

_SCALE = float(2**64)


def unit_hash(experiment_id: str, order_id: str) -> float:
    """The order's point in [0, 1) for this experiment."""
    digest = hashlib.blake2b(
        f"{experiment_id}\0{order_id}".encode(), digest_size=8, usedforsecurity=False
    ).digest()
    return int.from_bytes(digest, "little") / _SCALE


def assign(experiment_id: str, order_id: str | None, split: float) -> bool:
    """True when the order goes to the candidate arm."""
    return order_id is not None and unit_hash(experiment_id, order_id) < split


def assign_many(experiment_id: str, order_ids: Sequence[str | None], split: float) -> np.ndarray:
    """:func:`assign` for each order (a boolean array)."""
    return np.fromiter(
        (assign(experiment_id, o, split) for o in order_ids), dtype=bool, count=len(order_ids)
    )
