-- The provisioner: restarts asked for (kept so that re-applying an instance's objects never
-- restarts it again), when it was placed, and indexes for placement and the resync.
ALTER TABLE service_instances
    ADD COLUMN restarted_at TIMESTAMPTZ,
    ADD COLUMN placed_at TIMESTAMPTZ,
    -- Bumped by every change of what the instance should be (desired state, restart,
    -- placement): a status observed under an older generation is not written.
    ADD COLUMN generation BIGINT NOT NULL DEFAULT 0,
    -- The rendered environment (generated secrets included), sealed with the credentials
    -- key: the source of truth, so that a lost Secret never rotates a password.
    ADD COLUMN credentials BYTEA;

CREATE INDEX service_instances_node ON service_instances (node_id) WHERE node_id IS NOT NULL;
CREATE INDEX service_instances_unsettled ON service_instances (id)
    WHERE status <> 'TERMINATED';
