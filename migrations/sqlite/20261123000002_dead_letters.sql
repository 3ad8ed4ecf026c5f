-- Jobs that failed for good, for operators to see and replay (see the
-- Postgres migration).
CREATE TABLE dead_letters (
    id            BLOB PRIMARY KEY,
    tenant_id     BLOB NOT NULL REFERENCES tenants (id),
    connection_id BLOB NOT NULL REFERENCES connections (id),
    job_kind      TEXT NOT NULL,
    job           TEXT NOT NULL,
    error         TEXT NOT NULL,
    attempts      INTEGER NOT NULL,
    failed_at     TEXT NOT NULL,
    replayed_at   TEXT
);
CREATE INDEX dead_letters_open ON dead_letters (tenant_id, id) WHERE replayed_at IS NULL;
