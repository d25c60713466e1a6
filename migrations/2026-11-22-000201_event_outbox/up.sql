-- The event outbox (src/events/outbox.rs): high-rate writers insert their live events here
-- in the business transaction instead of calling pg_notify, whose commit takes a global
-- lock. Every replica tails the table by id and fans the rows out to its subscribers.
--
-- xact_id is the inserting transaction's id (xid8 as BIGINT): the tailer compares it with
-- the snapshot of its previous read to find rows whose transaction committed after a
-- higher id had been read (ids are handed out at INSERT, not at commit).
CREATE TABLE event_outbox (
    id         BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic      TEXT        NOT NULL,
    payload    JSONB       NOT NULL,
    xact_id    BIGINT      NOT NULL DEFAULT pg_current_xact_id()::text::bigint,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX event_outbox_xact_id_idx ON event_outbox (xact_id);
