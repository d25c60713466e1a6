DROP TABLE service_plans;
DROP TABLE services;
DROP TABLE service_categories;
