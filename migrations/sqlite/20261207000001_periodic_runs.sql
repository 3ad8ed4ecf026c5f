-- Periodic jobs' runs (see the Postgres migration): crm_object may be NULL
-- and a counts column holds their named counts as JSON. SQLite cannot drop
-- a NOT NULL, so the table is rebuilt; nothing references sync_runs.
CREATE TABLE sync_runs_new (
    id            BLOB PRIMARY KEY,
    tenant_id     BLOB NOT NULL REFERENCES tenants (id),
    connection_id BLOB NOT NULL REFERENCES connections (id),
    crm_object    TEXT,
    kind          TEXT NOT NULL,
    direction     TEXT NOT NULL,
    status        TEXT NOT NULL,
    page_token    TEXT,
    pages_done    INTEGER NOT NULL DEFAULT 0,
    processed     INTEGER NOT NULL DEFAULT 0,
    created       INTEGER NOT NULL DEFAULT 0,
    updated       INTEGER NOT NULL DEFAULT 0,
    unchanged     INTEGER NOT NULL DEFAULT 0,
    failed        INTEGER NOT NULL DEFAULT 0,
    error         TEXT,
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    updated_at    TEXT NOT NULL,
    counts        TEXT
);
INSERT INTO sync_runs_new (id, tenant_id, connection_id, crm_object, kind, direction, status, page_token,
                           pages_done, processed, created, updated, unchanged, failed, error, started_at,
                           finished_at, updated_at)
SELECT id, tenant_id, connection_id, crm_object, kind, direction, status, page_token,
       pages_done, processed, created, updated, unchanged, failed, error, started_at,
       finished_at, updated_at
  FROM sync_runs;
DROP TABLE sync_runs;
ALTER TABLE sync_runs_new RENAME TO sync_runs;
CREATE INDEX sync_runs_latest ON sync_runs (connection_id, started_at DESC);
