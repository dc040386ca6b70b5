-- Which process runs a job, and until when (its lease, renewed by a heartbeat). A job
-- whose lease lapsed (its process died) is claimed by another process.
ALTER TABLE jobs ADD COLUMN owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_expires_at DOUBLE PRECISION;
CREATE INDEX jobs_owner ON jobs(owner);
-- The bot processes sharing this database, each with its last heartbeat.
CREATE TABLE processes (
    id           TEXT PRIMARY KEY,
    started_at   DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    shards       TEXT NOT NULL DEFAULT ''
);
-- The gateway's breaker, shared by every process (one row): why submissions are paused.
CREATE TABLE breaker (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    reason     TEXT,
    opened_at  DOUBLE PRECISION,
    opened_by  TEXT,
    updated_at DOUBLE PRECISION NOT NULL DEFAULT 0
);
INSERT INTO breaker (id, reason, updated_at) VALUES (1, NULL, 0);
-- One-shot windows shared by every process (e.g. a member's 🔁 on one message starts one
-- job a minute, whichever process sees the reaction): the key is taken until `expires_at`.
CREATE TABLE cooldowns (
    key        TEXT PRIMARY KEY,
    expires_at DOUBLE PRECISION NOT NULL
);
