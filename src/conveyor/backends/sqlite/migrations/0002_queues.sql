-- Schema version 2: per-queue state. A paused queue keeps its jobs; no worker claims them.
CREATE TABLE {p}_queues (
    name      TEXT PRIMARY KEY,
    paused    INTEGER NOT NULL DEFAULT 0,
    paused_at REAL
);
