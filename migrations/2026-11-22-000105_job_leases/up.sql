-- Leases: a claimed job is held until `lease_expires_at`, which its worker keeps pushing
-- forward while the job runs; any worker requeues a job whose lease ran out (a killed
-- process). Plus indexes for the admin list (newest first, optionally by status and kind)
-- and for pruning finished jobs.

ALTER TABLE jobs ADD COLUMN lease_expires_at TIMESTAMPTZ;

-- Jobs running when this migration ran were claimed without a lease: give them the ten
-- minutes the previous start-up sweep gave them.
UPDATE jobs SET lease_expires_at = coalesce(locked_at, now()) + interval '10 minutes'
WHERE status = 'RUNNING';

CREATE INDEX jobs_lease_expiry_idx ON jobs (lease_expires_at) WHERE status = 'RUNNING';
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE status IN ('SUCCEEDED', 'FAILED');
CREATE INDEX jobs_status_created_at_idx ON jobs (status, created_at DESC, id DESC);
CREATE INDEX jobs_kind_created_at_idx ON jobs (kind, created_at DESC, id DESC);
CREATE INDEX jobs_kind_status_created_at_idx ON jobs (kind, status, created_at DESC, id DESC);
