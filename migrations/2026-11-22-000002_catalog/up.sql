-- The catalog: categories, services (an app image and how to run it) and plans (what is sold).

CREATE TABLE service_categories (
    id          UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    slug        TEXT        NOT NULL UNIQUE,
    name        TEXT        NOT NULL,
    description TEXT        NOT NULL DEFAULT '',
    icon        TEXT,
    sort_order  INTEGER     NOT NULL DEFAULT 0,
    is_active   BOOLEAN     NOT NULL DEFAULT TRUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE services (
    id                UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    category_id       UUID        REFERENCES service_categories (id) ON DELETE SET NULL,
    slug              TEXT        NOT NULL UNIQUE,
    name              TEXT        NOT NULL,
    description       TEXT        NOT NULL DEFAULT '',
    icon              TEXT,
    docker_image      TEXT        NOT NULL,
    container_port    INTEGER     NOT NULL CHECK (container_port BETWEEN 1 AND 65535),
    -- Environment variable name -> template (may reference generated secrets).
    env_template      JSONB       NOT NULL DEFAULT '{}'::jsonb,
    volume_mount_path TEXT,
    tags              TEXT[]      NOT NULL DEFAULT '{}',
    is_active         BOOLEAN     NOT NULL DEFAULT TRUE,
    is_public         BOOLEAN     NOT NULL DEFAULT TRUE,
    is_featured       BOOLEAN     NOT NULL DEFAULT FALSE,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX services_category_id_idx ON services (category_id);
CREATE INDEX services_created_at_id_idx ON services (created_at DESC, id DESC);

CREATE TABLE service_plans (
    id                     UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    service_id             UUID        NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    name                   TEXT        NOT NULL,
    plan_type              TEXT        NOT NULL CHECK (plan_type IN ('BASIC', 'STANDARD', 'PREMIUM', 'ENTERPRISE')),
    -- Minor units of `currency` (ISO 4217); never a float.
    monthly_price          BIGINT      NOT NULL CHECK (monthly_price >= 0),
    currency               TEXT        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    cpu_milli              INTEGER     NOT NULL CHECK (cpu_milli > 0),
    memory_mb              INTEGER     NOT NULL CHECK (memory_mb > 0),
    storage_gb             INTEGER     NOT NULL CHECK (storage_gb > 0),
    -- NULL: unlimited.
    total_quota            INTEGER     CHECK (total_quota >= 0),
    used_quota             INTEGER     NOT NULL DEFAULT 0 CHECK (used_quota >= 0),
    max_instances_per_user INTEGER     CHECK (max_instances_per_user > 0),
    sort_order             INTEGER     NOT NULL DEFAULT 0,
    is_active              BOOLEAN     NOT NULL DEFAULT TRUE,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT service_plans_quota_not_exceeded CHECK (total_quota IS NULL OR used_quota <= total_quota),
    CONSTRAINT service_plans_service_name_key UNIQUE (service_id, name)
);
CREATE INDEX service_plans_service_id_idx ON service_plans (service_id);
