DROP INDEX service_instances_unsettled;
DROP INDEX service_instances_node;
ALTER TABLE service_instances DROP COLUMN credentials, DROP COLUMN generation, DROP COLUMN placed_at, DROP COLUMN restarted_at;
