-- Predictions stored per written batch (server/store/batches.py): one row per batch with
-- the rows' columns packed, two narrow tables for idempotency and feedback's order lookups, and a
-- view named like 0001's table with its columns. The rows of 0001's table are moved into
-- batches by the store's code right after this file runs, in the same transaction
-- (SqliteStore._move_v1_rows), which then drops predictions_v1.
ALTER TABLE predictions RENAME TO predictions_v1;

CREATE TABLE prediction_batches (
    batch_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant        TEXT NOT NULL,
    model_version TEXT NOT NULL,
    arm           TEXT NOT NULL,
    n             INTEGER NOT NULL,  -- rows in the batch
    width         INTEGER NOT NULL,  -- bytes of one row's features
    created_min   REAL NOT NULL,     -- epoch seconds, UTC, of the oldest row
    created_max   REAL NOT NULL,     -- ... and of the newest
    -- JSON array, one [row_id, request_id, order_id, eta, p10, p90, created_at,
    -- input_offset, input_bytes] per row, in row order
    rows          TEXT NOT NULL,
    inputs        BLOB NOT NULL,     -- the rows' raw inputs (UTF-8 JSON as sent), concatenated
    features      BLOB NOT NULL      -- the rows' float32 little-endian feature rows, concatenated
);
CREATE INDEX prediction_batches_tenant_created ON prediction_batches (tenant, created_max);
CREATE INDEX prediction_batches_created_min ON prediction_batches (created_min);

-- Which batches hold row ids starting with prefix (the part before the first ':').
CREATE TABLE prediction_keys (
    prefix   TEXT NOT NULL,
    batch_id INTEGER NOT NULL,
    PRIMARY KEY (prefix, batch_id)
) WITHOUT ROWID;

-- Orders with a logged prediction; the newest was made within an hour after last_created.
CREATE TABLE prediction_orders (
    tenant       TEXT NOT NULL,
    order_id     TEXT NOT NULL,
    last_created REAL NOT NULL,
    PRIMARY KEY (tenant, order_id)
) WITHOUT ROWID;

-- One row per prediction, as 0001's table had them (read only).
CREATE VIEW predictions AS
SELECT json_extract(r.value, '$[0]') AS row_id,
       json_extract(r.value, '$[1]') AS request_id,
       json_extract(r.value, '$[2]') AS order_id,
       b.tenant AS tenant,
       b.model_version AS model_version,
       b.arm AS arm,
       CAST(substr(b.inputs, json_extract(r.value, '$[7]') + 1, json_extract(r.value, '$[8]'))
            AS TEXT) AS inputs,
       substr(b.features, r.key * b.width + 1, b.width) AS features,
       json_extract(r.value, '$[3]') AS eta,
       json_extract(r.value, '$[4]') AS p10,
       json_extract(r.value, '$[5]') AS p90,
       json_extract(r.value, '$[6]') AS created_at
FROM prediction_batches AS b, json_each(b.rows) AS r;
