-- Hardening the api's side (issue #13); see the Postgres migration. SQLite
-- cannot add a CHECK to a table: triggers refuse an interval outside 5 s to
-- one day instead (of any type: SQLite stores what it is given).
UPDATE connections
   SET delta_interval_secs = MIN(MAX(CAST(delta_interval_secs AS INTEGER), 5), 86400),
       next_delta_at = NULL
 WHERE typeof(delta_interval_secs) <> 'integer'
    OR delta_interval_secs NOT BETWEEN 5 AND 86400;
CREATE TRIGGER connections_delta_interval_range_insert
BEFORE INSERT ON connections
WHEN typeof(NEW.delta_interval_secs) <> 'integer' OR NEW.delta_interval_secs NOT BETWEEN 5 AND 86400
BEGIN
    SELECT RAISE(ABORT, 'delta_interval_secs must be an integer from 5 to 86400');
END;
CREATE TRIGGER connections_delta_interval_range_update
BEFORE UPDATE OF delta_interval_secs ON connections
WHEN typeof(NEW.delta_interval_secs) <> 'integer' OR NEW.delta_interval_secs NOT BETWEEN 5 AND 86400
BEGIN
    SELECT RAISE(ABORT, 'delta_interval_secs must be an integer from 5 to 86400');
END;

CREATE UNIQUE INDEX tenants_api_token_hash ON tenants (api_token_hash);
