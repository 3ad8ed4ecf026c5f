-- Each connection's health checks (its token accepted, its CRM reachable),
-- so operators see when a connection broke and why.
CREATE TABLE connection_health (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    connection_id uuid NOT NULL REFERENCES connections (id),
    checked_at    timestamptz NOT NULL,
    ok            boolean NOT NULL,
    latency_ms    bigint NOT NULL,
    error         text
);
CREATE INDEX connection_health_latest ON connection_health (connection_id, checked_at DESC);
ALTER TABLE connection_health ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON connection_health
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON connection_health TO crmsync_app;
