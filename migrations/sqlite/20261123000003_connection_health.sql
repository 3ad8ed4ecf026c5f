-- Each connection's health checks (see the Postgres migration).
CREATE TABLE connection_health (
    id            BLOB PRIMARY KEY,
    tenant_id     BLOB NOT NULL REFERENCES tenants (id),
    connection_id BLOB NOT NULL REFERENCES connections (id),
    checked_at    TEXT NOT NULL,
    ok            BOOLEAN NOT NULL,
    latency_ms    INTEGER NOT NULL,
    error         TEXT
);
CREATE INDEX connection_health_latest ON connection_health (connection_id, checked_at DESC);
