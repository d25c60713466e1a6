DROP INDEX jobs_kind_status_created_at_idx;
DROP INDEX jobs_kind_created_at_idx;
DROP INDEX jobs_status_created_at_idx;
DROP INDEX jobs_finished_idx;
DROP INDEX jobs_lease_expiry_idx;
ALTER TABLE jobs DROP COLUMN lease_expires_at;
