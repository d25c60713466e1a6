-- Worker nodes: the Kubernetes machines instances run on, and their heartbeats.

CREATE TABLE worker_nodes (
    id                   UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    name                 TEXT        NOT NULL UNIQUE,
    hostname             TEXT        NOT NULL,
    ip_address           TEXT        NOT NULL,
    cpu_cores            INTEGER     NOT NULL CHECK (cpu_cores > 0),
    cpu_model            TEXT,
    memory_mb            BIGINT      NOT NULL CHECK (memory_mb > 0),
    storage_mb           BIGINT      NOT NULL CHECK (storage_mb > 0),
    architecture         TEXT        NOT NULL DEFAULT 'amd64',
    operating_system     TEXT        NOT NULL DEFAULT 'linux',
    region               TEXT,
    status               TEXT        NOT NULL DEFAULT 'PENDING'
                         CHECK (status IN ('ACTIVE', 'INACTIVE', 'MAINTENANCE', 'PENDING', 'NOT_READY')),
    is_ready             BOOLEAN     NOT NULL DEFAULT FALSE,
    is_schedulable       BOOLEAN     NOT NULL DEFAULT TRUE,
    max_pods             INTEGER     NOT NULL DEFAULT 110 CHECK (max_pods > 0),
    current_pods         INTEGER     NOT NULL DEFAULT 0 CHECK (current_pods >= 0),
    allocated_cpu_milli  INTEGER     NOT NULL DEFAULT 0 CHECK (allocated_cpu_milli >= 0),
    allocated_memory_mb  BIGINT      NOT NULL DEFAULT 0 CHECK (allocated_memory_mb >= 0),
    allocated_storage_mb BIGINT      NOT NULL DEFAULT 0 CHECK (allocated_storage_mb >= 0),
    labels               JSONB       NOT NULL DEFAULT '{}'::jsonb,
    taints               JSONB       NOT NULL DEFAULT '[]'::jsonb,
    kubelet_version      TEXT,
    container_runtime    TEXT,
    kernel_version       TEXT,
    os_image             TEXT,
    last_heartbeat       TIMESTAMPTZ,
    last_health_check    TIMESTAMPTZ,
    -- SHA-256 of the node token (`pdn_...`); the token itself is shown once.
    token_hash           BYTEA       NOT NULL UNIQUE,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
)
-- Heartbeats rewrite every row often: free space per page lets PostgreSQL update in
-- place (HOT), which is also why no index covers the heartbeat columns.
WITH (fillfactor = 70);
CREATE INDEX worker_nodes_created_at_id_idx ON worker_nodes (created_at DESC, id DESC);
