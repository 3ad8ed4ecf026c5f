-- Platform writes waiting to be pushed to a CRM (see the Postgres migration).
CREATE TABLE outbox (
    id            BLOB PRIMARY KEY,
    tenant_id     BLOB NOT NULL REFERENCES tenants (id),
    connection_id BLOB NOT NULL REFERENCES connections (id),
    record_id     BLOB NOT NULL REFERENCES records (id),
    operation     TEXT NOT NULL CHECK (operation IN ('upsert', 'delete')),
    status        TEXT NOT NULL DEFAULT 'pending',
    attempts      INTEGER NOT NULL DEFAULT 0,
    error         TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE INDEX outbox_pending ON outbox (connection_id, created_at) WHERE status = 'pending';
