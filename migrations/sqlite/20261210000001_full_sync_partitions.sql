-- A full sync's partitions (see the Postgres migration).
CREATE TABLE sync_run_partitions (
    tenant_id   BLOB NOT NULL REFERENCES tenants (id),
    run_id      BLOB NOT NULL REFERENCES sync_runs (id) ON DELETE CASCADE,
    partition   INTEGER NOT NULL,
    by_ids      BOOLEAN NOT NULL,
    ids_after   TEXT,
    ids_through TEXT,
    page_token  TEXT,
    pages_done  INTEGER NOT NULL DEFAULT 0,
    finished    BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (run_id, partition)
);
