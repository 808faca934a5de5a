-- Predictions logged off the hot path; row_id is the idempotency key.
CREATE TABLE predictions (
    row_id        TEXT PRIMARY KEY,
    request_id    TEXT NOT NULL,
    order_id      TEXT,
    tenant        TEXT NOT NULL,
    model_version TEXT NOT NULL,
    arm           TEXT NOT NULL DEFAULT 'production',
    inputs        TEXT NOT NULL,   -- the raw input as sent (JSON)
    features      BLOB NOT NULL,   -- float32 little-endian feature row
    eta           REAL NOT NULL,
    p10           REAL NOT NULL,
    p90           REAL NOT NULL,
    created_at    REAL NOT NULL    -- epoch seconds, UTC
);
CREATE INDEX predictions_created_at ON predictions (created_at);
CREATE INDEX predictions_tenant_order ON predictions (tenant, order_id);
CREATE INDEX predictions_tenant_created ON predictions (tenant, created_at);
CREATE INDEX predictions_version_arm_created ON predictions (model_version, arm, created_at);

-- Actual durations; one row per (tenant, order_id), the latest received wins.
CREATE TABLE feedback (
    tenant         TEXT NOT NULL,
    order_id       TEXT NOT NULL,
    actual_minutes REAL NOT NULL,
    completed_at   REAL NOT NULL,
    received_at    REAL NOT NULL,
    updates        INTEGER NOT NULL DEFAULT 0,  -- times the row was replaced
    PRIMARY KEY (tenant, order_id)
);
CREATE INDEX feedback_received_at ON feedback (received_at);
