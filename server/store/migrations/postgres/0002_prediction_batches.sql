-- Predictions stored per written batch (server/store/batches.py): one row per batch with
-- the rows' columns packed, two narrow tables for idempotency and feedback's order lookups, and a
-- view named like 0001's table with its columns. The rows of 0001's table are moved into
-- batches by the store's code right after this file runs, in the same transaction
-- (PostgresStore._move_v1_rows), which then drops predictions_v1.
ALTER TABLE predictions RENAME TO predictions_v1;

CREATE TABLE prediction_batches (
    batch_id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant        TEXT NOT NULL,
    model_version TEXT NOT NULL,
    arm           TEXT NOT NULL,
    n             INTEGER NOT NULL,             -- rows in the batch
    width         INTEGER NOT NULL,             -- bytes of one row's features
    created_min   DOUBLE PRECISION NOT NULL,    -- epoch seconds, UTC, of the oldest row
    created_max   DOUBLE PRECISION NOT NULL,    -- ... and of the newest
    -- one [row_id, request_id, order_id, eta, p10, p90, created_at, input_offset,
    -- input_bytes] per row, in row order
    rows          JSON NOT NULL,
    inputs        BYTEA NOT NULL,  -- the rows' raw inputs (UTF-8 JSON as sent), concatenated
    features      BYTEA NOT NULL   -- the rows' float32 little-endian feature rows, concatenated
);
-- Stored out of line uncompressed: no compression work per write, and substring() of
-- one row's input or features reads only that slice.
ALTER TABLE prediction_batches ALTER COLUMN rows SET STORAGE EXTERNAL,
    ALTER COLUMN inputs SET STORAGE EXTERNAL, ALTER COLUMN features SET STORAGE EXTERNAL;
CREATE INDEX prediction_batches_tenant_created ON prediction_batches (tenant, created_max);
CREATE INDEX prediction_batches_created_min ON prediction_batches (created_min);

-- Which batches hold row ids starting with prefix (the part before the first ':').
CREATE TABLE prediction_keys (
    prefix   TEXT NOT NULL,
    batch_id BIGINT NOT NULL,
    PRIMARY KEY (prefix, batch_id)
);

-- Orders with a logged prediction; the newest was made within an hour after last_created.
CREATE TABLE prediction_orders (
    tenant       TEXT NOT NULL,
    order_id     TEXT NOT NULL,
    last_created DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (tenant, order_id)
);

-- One row per prediction, as 0001's table had them (read only).
CREATE VIEW predictions AS
SELECT r.value ->> 0 AS row_id,
       r.value ->> 1 AS request_id,
       r.value ->> 2 AS order_id,
       b.tenant,
       b.model_version,
       b.arm,
       convert_from(substring(b.inputs FROM (r.value ->> 7)::integer + 1
                              FOR (r.value ->> 8)::integer), 'UTF8') AS inputs,
       substring(b.features FROM ((r.pos - 1) * b.width + 1)::integer FOR b.width) AS features,
       (r.value ->> 3)::double precision AS eta,
       (r.value ->> 4)::double precision AS p10,
       (r.value ->> 5)::double precision AS p90,
       (r.value ->> 6)::double precision AS created_at
FROM prediction_batches AS b
CROSS JOIN LATERAL json_array_elements(b.rows) WITH ORDINALITY AS r (value, pos);
