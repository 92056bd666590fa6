-- Events are written once and never changed. What is still to be published is a queue of its own
-- that the relay empties: marking events with a `published_at` update left a dead row version (and
-- new entries in every index of `events`) per event, and a growing `events` table is vacuumed too
-- seldom to keep up. A small queue table is vacuumed often, and scans of it stay short.
CREATE TABLE outbox (
    event_id bigint PRIMARY KEY REFERENCES events (event_id) ON DELETE CASCADE
);

INSERT INTO outbox (event_id) SELECT event_id FROM events WHERE published_at IS NULL;

DROP INDEX events_unpublished;
ALTER TABLE events DROP COLUMN published_at;
