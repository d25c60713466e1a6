-- Live events that keep every replica's read caches honest (src/cache.rs,
-- src/auth/cache.rs, src/catalog/cache.rs). The database publishes them itself, inside
-- the committing transaction, so that no write path (a new service function, a seed, a
-- hand-run UPDATE) can forget to. Channel and payload shape are src/events':
-- {"topic": ..., "payload": ...} on 'podium_events'. Identical payloads in one
-- transaction are delivered once.

-- A user's row changed or went, or one of their sessions was revoked: replicas forget
-- the user (and the sessions cached with them). userId null: forget everyone.
CREATE FUNCTION podium_identity_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    user_id UUID;
BEGIN
    -- Separate statements: each is planned against the row type it runs with.
    IF TG_LEVEL = 'ROW' AND TG_TABLE_NAME = 'users' THEN
        user_id := OLD.id;
    ELSIF TG_LEVEL = 'ROW' THEN
        user_id := OLD.user_id;
    END IF;
    PERFORM pg_notify('podium_events', json_build_object(
        'topic', 'auth.identity',
        'payload', json_build_object('userId', user_id))::text);
    RETURN NULL;
END
$$;

-- Not on last_login_at: every login would NOTIFY, and a commit that NOTIFYs takes a
-- global lock (the replica that logged the user in forgets the row itself).
CREATE TRIGGER users_identity_changed
    AFTER UPDATE OF name, email, password_hash, role, is_active, email_verified_at OR DELETE
    ON users
    FOR EACH ROW EXECUTE FUNCTION podium_identity_changed();

CREATE TRIGGER users_truncated
    AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION podium_identity_changed();

-- Not on last_used_at: a refresh touches its session and changes nothing cached.
CREATE TRIGGER sessions_revoked
    AFTER UPDATE OF revoked_at ON sessions
    FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at)
    EXECUTE FUNCTION podium_identity_changed();

-- Deleted sessions (the cleanup job, a user's deletion): one event for the statement.
CREATE TRIGGER sessions_deleted
    AFTER DELETE OR TRUNCATE ON sessions
    FOR EACH STATEMENT EXECUTE FUNCTION podium_identity_changed();

-- Any change to the catalog: replicas drop their snapshot of the public catalog.
CREATE FUNCTION podium_catalog_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('podium_events', '{"topic":"catalog.changed","payload":{}}');
    RETURN NULL;
END
$$;

CREATE TRIGGER service_categories_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON service_categories
    FOR EACH STATEMENT EXECUTE FUNCTION podium_catalog_changed();
CREATE TRIGGER services_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON services
    FOR EACH STATEMENT EXECUTE FUNCTION podium_catalog_changed();
CREATE TRIGGER service_plans_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON service_plans
    FOR EACH STATEMENT EXECUTE FUNCTION podium_catalog_changed();
