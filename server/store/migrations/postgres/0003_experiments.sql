-- Model experiments (A/B and shadow tests): one row each, written by server/experiments.
-- At most one experiment per tenant runs at a time (the partial unique index); the
-- predictions of a running experiment are logged with arm 'baseline', 'candidate' or
-- 'shadow' and belong to it by time (started_at ... ended_at).
CREATE TABLE experiments (
    experiment_id     TEXT PRIMARY KEY,
    tenant            TEXT NOT NULL,
    mode              TEXT NOT NULL CHECK (mode IN ('ab', 'shadow')),
    baseline_version  TEXT NOT NULL,
    candidate_version TEXT NOT NULL,
    split             DOUBLE PRECISION NOT NULL,   -- share of orders routed to the candidate (ab)
    status            TEXT NOT NULL CHECK (status IN ('running', 'stopped', 'concluded')),
    started_at        DOUBLE PRECISION NOT NULL,   -- epoch seconds, UTC
    planned_hours     DOUBLE PRECISION NOT NULL,
    ended_at          DOUBLE PRECISION,
    decision          TEXT,
    reason            TEXT,
    options           TEXT NOT NULL,             -- JSON: analysis options, who started it
    updated_at        DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX experiments_one_running ON experiments (tenant) WHERE status = 'running';
CREATE INDEX experiments_tenant_started ON experiments (tenant, started_at);

-- Retraining reads the feedback of a window of completion times.
CREATE INDEX feedback_tenant_completed ON feedback (tenant, completed_at);
