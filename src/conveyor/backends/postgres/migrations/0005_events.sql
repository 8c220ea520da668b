-- Schema version 5: the job event log that app.events() follows. One row per published
-- batch (a JSON array of events); trimmed to the newest 1,000 batches as batches
-- arrive. Publishing notifies "<schema>.wake" with the payload ' events' (a space cannot
-- start a queue name), so readers block instead of polling.
CREATE TABLE {p}.events (
    seq    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    events text NOT NULL
);
