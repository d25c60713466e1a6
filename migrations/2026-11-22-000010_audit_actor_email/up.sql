-- Audit rows outlive what they describe: the actor's id and email are kept as they were
-- when the row was written, even after that user is deleted.
ALTER TABLE audit_log DROP CONSTRAINT audit_log_actor_id_fkey;
ALTER TABLE audit_log ADD COLUMN actor_email TEXT;
UPDATE audit_log a SET actor_email = u.email FROM users u WHERE u.id = a.actor_id;
