"""Storage: the prediction log and feedback, in SQLite (default) or PostgreSQL.

``open_store(DATABASE_URL)`` gives a :class:`Store`; :class:`PredictionLog` batches
predictions into it off the hot path, with a :class:`Spool` file for when it is down.
"""

from server.store.base import (
    Experiment,
    FeatureSample,
    FeedbackResult,
    FeedbackRow,
    JoinedRow,
    LabelledRow,
    PredictionRow,
    SchemaVersionError,
    Store,
    StoreDataError,
    open_store,
    pack_features,
    store_from_url,
    unpack_features,
)
from server.store.log import PredictionLog
from server.store.spool import Spool, write_rows

__all__ = [
    "Experiment",
    "FeatureSample",
    "FeedbackResult",
    "FeedbackRow",
    "JoinedRow",
    "LabelledRow",
    "PredictionLog",
    "PredictionRow",
    "SchemaVersionError",
    "Spool",
    "Store",
    "StoreDataError",
    "open_store",
    "pack_features",
    "store_from_url",
    "unpack_features",
    "write_rows",
]
