ALTER TABLE audit_log DROP COLUMN actor_email;
UPDATE audit_log SET actor_id = NULL WHERE actor_id NOT IN (SELECT id FROM users);
ALTER TABLE audit_log
    ADD CONSTRAINT audit_log_actor_id_fkey FOREIGN KEY (actor_id) REFERENCES users (id) ON DELETE SET NULL;
