-- Schema version 3: the last tick each schedule enqueued, for leaderless scheduling.
CREATE TABLE {p}_schedules (
    name      TEXT PRIMARY KEY,
    last_tick REAL NOT NULL
);
