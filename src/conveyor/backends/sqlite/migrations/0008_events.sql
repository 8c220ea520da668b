-- Schema version 8: the job event log that app.events() follows. One row per published
-- batch (a JSON array of events); trimmed to the newest 1,000 batches as batches arrive.
CREATE TABLE {p}_events (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    events TEXT NOT NULL
);
