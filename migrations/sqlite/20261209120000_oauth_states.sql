-- OAuth states in flight (see the Postgres migration).
CREATE TABLE oauth_states (
    id           BLOB PRIMARY KEY,
    tenant_id    BLOB NOT NULL REFERENCES tenants (id),
    provider     TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    consumed_at  TEXT
);
CREATE INDEX oauth_states_expiry ON oauth_states (tenant_id, expires_at);
