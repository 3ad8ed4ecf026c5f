-- Hardening the api's side (issue #13): no tenant setting can stop another
-- tenant's work, and unknown api tokens cost one indexed lookup.

-- A delta interval is 5 s to one day. The api accepted any positive number
-- before; bring those rows into range, and make a due time pushed far out by
-- an old interval due now.
UPDATE connections
   SET delta_interval_secs = LEAST(GREATEST(delta_interval_secs, 5), 86400),
       next_delta_at = NULL
 WHERE delta_interval_secs NOT BETWEEN 5 AND 86400;
UPDATE connections SET next_delta_at = NULL
 WHERE next_delta_at > now() + interval '1 day';
ALTER TABLE connections ADD CONSTRAINT connections_delta_interval_range
    CHECK (delta_interval_secs BETWEEN 5 AND 86400);

-- The scheduler's claim covers every tenant in one statement, so no row may
-- fail it: an interval outside the range (a row written past the check) is
-- taken at the nearest bound, and returned so the scheduler reports it.
DROP FUNCTION crmsync_claim_due_deltas(timestamptz);
CREATE FUNCTION crmsync_claim_due_deltas(at timestamptz)
RETURNS TABLE (tenant_id uuid, connection_id uuid, interval_secs bigint)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    UPDATE public.connections
       SET next_delta_at = at + make_interval(secs => LEAST(GREATEST(delta_interval_secs, 5), 86400))
     WHERE status = 'active' AND (next_delta_at IS NULL OR next_delta_at <= at)
    RETURNING tenant_id, id, delta_interval_secs
$$;
REVOKE ALL ON FUNCTION crmsync_claim_due_deltas(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION crmsync_claim_due_deltas(timestamptz) TO crmsync_app;

-- An api token is found by its hash through a unique index (tokens are 32
-- random bytes: two tenants never share one), one row at most.
CREATE UNIQUE INDEX tenants_api_token_hash ON tenants (api_token_hash);
CREATE OR REPLACE FUNCTION crmsync_tenant_by_token(token_hash bytea) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT id FROM public.tenants WHERE api_token_hash = token_hash LIMIT 1
$$;
