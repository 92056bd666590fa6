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

-- The notification names the lowest event id the statement added: the relay scans the queue from
-- there, not from its start, where rows it deleted wait for vacuum.
CREATE OR REPLACE FUNCTION notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('noetl_outbox', (SELECT min(event_id) FROM added)::text);
    RETURN NULL;
END
$$;

DROP TRIGGER events_notify_outbox ON events;
CREATE TRIGGER events_notify_outbox
    AFTER INSERT ON events REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox();
