-- The durable job queue (claimed with FOR UPDATE SKIP LOCKED) and the cron schedules.

CREATE TABLE jobs (
    id           UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    kind         TEXT        NOT NULL,
    payload      JSONB       NOT NULL DEFAULT '{}'::jsonb,
    status       TEXT        NOT NULL DEFAULT 'QUEUED'
                 CHECK (status IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED')),
    run_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts     INTEGER     NOT NULL DEFAULT 0,
    max_attempts INTEGER     NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    last_error   TEXT,
    -- Anything that must be enqueued once (a cron tick, a billing period) names itself here.
    unique_key   TEXT        UNIQUE,
    locked_by    TEXT,
    locked_at    TIMESTAMPTZ,
    finished_at  TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX jobs_runnable_idx ON jobs (run_at) WHERE status = 'QUEUED';
CREATE INDEX jobs_created_at_idx ON jobs (created_at DESC, id DESC);

-- One row per cron schedule; whoever advances `next_run_at` enqueues that tick.
CREATE TABLE schedules (
    name        TEXT        PRIMARY KEY,
    cron        TEXT        NOT NULL,
    next_run_at TIMESTAMPTZ NOT NULL,
    last_run_at TIMESTAMPTZ
);
