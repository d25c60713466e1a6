DROP TRIGGER service_plans_changed ON service_plans;
DROP TRIGGER services_changed ON services;
DROP TRIGGER service_categories_changed ON service_categories;
DROP FUNCTION podium_catalog_changed();
DROP TRIGGER sessions_deleted ON sessions;
DROP TRIGGER sessions_revoked ON sessions;
DROP TRIGGER users_truncated ON users;
DROP TRIGGER users_identity_changed ON users;
DROP FUNCTION podium_identity_changed();
