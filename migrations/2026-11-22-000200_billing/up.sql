-- Billing: wallets and their ledger, Stripe top-ups, subscriptions and their instances,
-- gapless invoices, idempotency keys and processed webhook events.
--
-- Money is BIGINT minor units of the platform currency. A wallet's balance is the sum of
-- its ledger; `wallets.balance` caches it and changes only in the transaction that writes
-- the ledger row, checked here so that no code path can break the chain.

CREATE TABLE wallets (
    user_id            UUID        PRIMARY KEY REFERENCES users (id) ON DELETE RESTRICT,
    currency           TEXT        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    balance            BIGINT      NOT NULL DEFAULT 0 CHECK (balance >= 0),
    -- The Stripe customer made on the first top-up.
    stripe_customer_id TEXT        UNIQUE,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE wallet_transactions (
    id             UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        UUID        NOT NULL REFERENCES wallets (user_id) ON DELETE RESTRICT,
    type           TEXT        NOT NULL
                   CHECK (type IN ('TOP_UP', 'SUBSCRIPTION', 'RENEWAL', 'UPGRADE', 'REFUND', 'ADJUSTMENT', 'COUPON')),
    -- Signed: credits positive, debits negative.
    amount         BIGINT      NOT NULL CHECK (amount <> 0),
    currency       TEXT        NOT NULL,
    balance_before BIGINT      NOT NULL CHECK (balance_before >= 0),
    balance_after  BIGINT      NOT NULL CHECK (balance_after >= 0),
    -- What the movement is about, for people: an invoice number, a PaymentIntent id, ...
    reference      TEXT,
    description    TEXT        NOT NULL,
    subscription_id UUID,
    invoice_id     UUID,
    -- A refund names the movement it gives back.
    refund_of      UUID        REFERENCES wallet_transactions (id),
    -- Anything that must move money once (a top-up, a renewal of one period) names itself.
    unique_key     TEXT        UNIQUE,
    created_by     UUID,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT wallet_transactions_chain CHECK (balance_after = balance_before + amount)
);
CREATE INDEX wallet_transactions_user_created_idx ON wallet_transactions (user_id, created_at DESC, id DESC);
CREATE INDEX wallet_transactions_created_idx ON wallet_transactions (created_at DESC, id DESC);
CREATE INDEX wallet_transactions_refund_of_idx ON wallet_transactions (refund_of) WHERE refund_of IS NOT NULL;

CREATE TABLE top_ups (
    id                UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id           UUID        NOT NULL REFERENCES wallets (user_id) ON DELETE RESTRICT,
    amount            BIGINT      NOT NULL CHECK (amount > 0),
    currency          TEXT        NOT NULL,
    status            TEXT        NOT NULL DEFAULT 'PENDING'
                      CHECK (status IN ('PENDING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
    payment_intent_id TEXT        UNIQUE,
    client_secret     TEXT,
    failure_message   TEXT,
    settled_at        TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX top_ups_user_created_idx ON top_ups (user_id, created_at DESC, id DESC);
CREATE INDEX top_ups_pending_idx ON top_ups (created_at) WHERE status = 'PENDING';

-- Each provider event is acted on once.
CREATE TABLE processed_webhook_events (
    provider    TEXT        NOT NULL,
    event_id    TEXT        NOT NULL,
    event_type  TEXT        NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_id)
);

CREATE TABLE service_subscriptions (
    id                   UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id              UUID        NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    -- A plan in use can't be deleted.
    plan_id              UUID        NOT NULL REFERENCES service_plans (id) ON DELETE RESTRICT,
    name                 TEXT        NOT NULL,
    status               TEXT        NOT NULL
                         CHECK (status IN ('PENDING', 'ACTIVE', 'PAST_DUE', 'SUSPENDED', 'CANCELLED', 'EXPIRED')),
    -- The monthly price it was sold at, kept until its next renewal.
    price                BIGINT      NOT NULL CHECK (price >= 0),
    currency             TEXT        NOT NULL,
    current_period_start TIMESTAMPTZ NOT NULL,
    current_period_end   TIMESTAMPTZ NOT NULL,
    auto_renew           BOOLEAN     NOT NULL DEFAULT TRUE,
    cancel_at_period_end BOOLEAN     NOT NULL DEFAULT FALSE,
    failed_charges       INTEGER     NOT NULL DEFAULT 0,
    grace_until          TIMESTAMPTZ,
    next_retry_at        TIMESTAMPTZ,
    suspended_at         TIMESTAMPTZ,
    -- Set by an administrator's suspension: the billing cycle leaves it alone.
    suspended_by_admin   BOOLEAN     NOT NULL DEFAULT FALSE,
    cancelled_at         TIMESTAMPTZ,
    expired_at           TIMESTAMPTZ,
    -- True while it counts in its plan's used_quota (until CANCELLED or EXPIRED).
    holds_quota          BOOLEAN     NOT NULL DEFAULT TRUE,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT service_subscriptions_period CHECK (current_period_end > current_period_start)
);
CREATE INDEX service_subscriptions_user_created_idx ON service_subscriptions (user_id, created_at DESC, id DESC);
CREATE INDEX service_subscriptions_created_idx ON service_subscriptions (created_at DESC, id DESC);
CREATE INDEX service_subscriptions_plan_idx ON service_subscriptions (plan_id) WHERE holds_quota;
-- What the billing cycle looks for.
CREATE INDEX service_subscriptions_due_idx ON service_subscriptions (current_period_end) WHERE status = 'ACTIVE';
CREATE INDEX service_subscriptions_dunning_idx ON service_subscriptions (status) WHERE status IN ('PAST_DUE', 'SUSPENDED');

CREATE TABLE service_instances (
    id              UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    subscription_id UUID        NOT NULL UNIQUE REFERENCES service_subscriptions (id) ON DELETE RESTRICT,
    user_id         UUID        NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    name            TEXT        NOT NULL,
    subdomain       TEXT        NOT NULL UNIQUE,
    node_id         UUID        REFERENCES worker_nodes (id) ON DELETE SET NULL,
    namespace       TEXT,
    desired_state   TEXT        NOT NULL CHECK (desired_state IN ('RUNNING', 'STOPPED', 'DELETED')),
    status          TEXT        NOT NULL DEFAULT 'PENDING'
                    CHECK (status IN ('PENDING', 'PROVISIONING', 'RUNNING', 'STOPPING', 'STOPPED',
                                      'RESTARTING', 'FAILED', 'TERMINATING', 'TERMINATED')),
    status_message  TEXT,
    public_url      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX service_instances_user_created_idx ON service_instances (user_id, created_at DESC, id DESC);
CREATE INDEX service_instances_node_idx ON service_instances (node_id);

-- Gapless invoice numbers: the year's counter row is taken in the transaction that
-- issues the invoice, so a rollback gives its number back and concurrent issuers queue.
CREATE TABLE invoice_counters (
    year        INTEGER PRIMARY KEY,
    last_number INTEGER NOT NULL CHECK (last_number > 0)
);

CREATE TABLE invoices (
    id              UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    number          TEXT        NOT NULL UNIQUE,
    year            INTEGER     NOT NULL,
    sequence        INTEGER     NOT NULL,
    user_id         UUID        NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    subscription_id UUID        REFERENCES service_subscriptions (id) ON DELETE RESTRICT,
    status          TEXT        NOT NULL CHECK (status IN ('OPEN', 'PAID', 'VOID')),
    currency        TEXT        NOT NULL,
    period_start    TIMESTAMPTZ,
    period_end      TIMESTAMPTZ,
    subtotal        BIGINT      NOT NULL,
    tax             BIGINT      NOT NULL DEFAULT 0,
    total           BIGINT      NOT NULL,
    tax_name        TEXT,
    -- Basis points: 1100 is 11 %.
    tax_rate_bp     INTEGER     NOT NULL DEFAULT 0,
    -- What the invoice bills, once per subscription: "renewal:<period start>", ...
    purpose         TEXT        NOT NULL,
    issued_at       TIMESTAMPTZ NOT NULL,
    paid_at         TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT invoices_year_sequence_key UNIQUE (year, sequence),
    CONSTRAINT invoices_subscription_purpose_key UNIQUE (subscription_id, purpose)
);
CREATE INDEX invoices_user_created_idx ON invoices (user_id, created_at DESC, id DESC);
CREATE INDEX invoices_created_idx ON invoices (created_at DESC, id DESC);
CREATE INDEX invoices_open_idx ON invoices (subscription_id) WHERE status = 'OPEN';

CREATE TABLE invoice_lines (
    id          UUID    PRIMARY KEY DEFAULT gen_random_uuid(),
    invoice_id  UUID    NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    description TEXT    NOT NULL,
    quantity    INTEGER NOT NULL CHECK (quantity > 0),
    unit_price  BIGINT  NOT NULL,
    amount      BIGINT  NOT NULL,
    CONSTRAINT invoice_lines_position_key UNIQUE (invoice_id, position)
);

-- A money mutation's idempotency key: the first result, kept 24 h.
CREATE TABLE idempotency_keys (
    user_id      UUID        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key          TEXT        NOT NULL,
    operation    TEXT        NOT NULL,
    -- SHA-256 of the operation's arguments: the same key with others is a conflict.
    request_hash BYTEA       NOT NULL,
    -- Ids of what the first call made.
    result       JSONB       NOT NULL DEFAULT '{}'::jsonb,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
