-- Runs once when the Postgres volume is created: the application login role.
-- It is a member of crmsync_app (which `crmsync migrate` grants table rights
-- to), owns nothing and cannot bypass row-level security.
CREATE ROLE crmsync_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
CREATE ROLE crmsync LOGIN PASSWORD 'crmsync' NOSUPERUSER NOBYPASSRLS IN ROLE crmsync_app;
