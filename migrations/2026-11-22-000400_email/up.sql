-- Mail: the durable outbox, one-time account tokens, and what a user chose to hear about.

-- One row per message, written in the transaction of what causes it and sent by the
-- `email.send` job (at least once: a crash after the server accepted a message and before
-- SENT was written sends it again, under the same Message-ID, `<id@domain>`).
CREATE TABLE email_outbox (
    id              UUID        PRIMARY KEY,
    user_id         UUID        REFERENCES users (id) ON DELETE SET NULL,
    recipient       TEXT        NOT NULL,
    template        TEXT        NOT NULL,
    subject         TEXT        NOT NULL,
    -- What the template is rendered from at send time (never a secret).
    params          JSONB       NOT NULL DEFAULT '{}'::jsonb,
    -- A one-time token for the message's link, sealed with the credentials key and bound to
    -- this row; erased once the message is sent (the database keeps only its hash).
    secret          BYTEA,
    status          TEXT        NOT NULL DEFAULT 'QUEUED'
                    CHECK (status IN ('QUEUED', 'SENT', 'FAILED')),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    last_error      TEXT,
    -- A message that must go once (a reminder for one period, a dunning retry) names itself.
    unique_key      TEXT        UNIQUE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_attempt_at TIMESTAMPTZ,
    sent_at         TIMESTAMPTZ
);
CREATE INDEX email_outbox_created_at_idx ON email_outbox (created_at DESC, id DESC);
CREATE INDEX email_outbox_status_created_at_idx ON email_outbox (status, created_at DESC, id DESC);
CREATE INDEX email_outbox_user_idx ON email_outbox (user_id) WHERE user_id IS NOT NULL;
-- The per-address cap on account mail (resets, verification links).
CREATE INDEX email_outbox_recipient_idx ON email_outbox (recipient, template, created_at);

-- Email verification and password reset tokens: stored hashed, single use, bound to the
-- address they were sent to.
CREATE TABLE email_tokens (
    id         UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    UUID        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    TEXT        NOT NULL CHECK (purpose IN ('VERIFY_EMAIL', 'RESET_PASSWORD')),
    token_hash BYTEA       NOT NULL UNIQUE,
    email      TEXT        NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX email_tokens_user_purpose_idx ON email_tokens (user_id, purpose);

-- Switchable notifications; no row means every one is on. Account and money messages have
-- no switch.
CREATE TABLE notification_preferences (
    user_id           UUID        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    instance_alerts   BOOLEAN     NOT NULL DEFAULT true,
    renewal_reminders BOOLEAN     NOT NULL DEFAULT true,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
