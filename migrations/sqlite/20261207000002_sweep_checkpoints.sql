-- The detect_conflicts sweep's checkpoints and the links' generation stamp
-- (see the Postgres migration).
CREATE TABLE sweep_checkpoints (
    tenant_id       BLOB NOT NULL REFERENCES tenants (id),
    connection_id   BLOB NOT NULL REFERENCES connections (id),
    crm_object      TEXT NOT NULL,
    generation      INTEGER NOT NULL,
    in_pass         BOOLEAN NOT NULL,
    page_token      TEXT,
    pass_started_at TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (connection_id, crm_object)
);
ALTER TABLE record_links ADD COLUMN swept_generation INTEGER;
