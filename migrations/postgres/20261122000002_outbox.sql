-- Platform writes waiting to be pushed to a CRM: committed in the same
-- transaction as the write, so a crash can delay a push but never lose it.
CREATE TABLE outbox (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    connection_id uuid NOT NULL REFERENCES connections (id),
    record_id     uuid NOT NULL REFERENCES records (id),
    operation     text NOT NULL CHECK (operation IN ('upsert', 'delete')),
    status        text NOT NULL DEFAULT 'pending',
    attempts      bigint NOT NULL DEFAULT 0,
    error         text,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX outbox_pending ON outbox (connection_id, created_at) WHERE status = 'pending';
ALTER TABLE outbox ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON outbox
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox TO crmsync_app;

-- The api authenticates a bearer token before it knows the tenant: an
-- owner-run lookup by the token's hash, returning the id only.
CREATE FUNCTION crmsync_tenant_by_token(token_hash bytea) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT id FROM public.tenants WHERE api_token_hash = token_hash
$$;
REVOKE ALL ON FUNCTION crmsync_tenant_by_token(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION crmsync_tenant_by_token(bytea) TO crmsync_app;
