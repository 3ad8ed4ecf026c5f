-- OAuth states in flight (`GET /v1/oauth/{provider}/authorize` hands one
-- out; the callback consumes it with one conditional update, so a state is
-- used once fleet-wide). The state itself is signed and carries the
-- tenant, provider, expiry and this row's id; the row adds where the user
-- goes back to and whether it was used. Rows are deleted a day after expiry.
CREATE TABLE oauth_states (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    provider     text NOT NULL,
    redirect_uri text NOT NULL,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    consumed_at  timestamptz
);
CREATE INDEX oauth_states_expiry ON oauth_states (tenant_id, expires_at);
ALTER TABLE oauth_states ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON oauth_states
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON oauth_states TO crmsync_app;
