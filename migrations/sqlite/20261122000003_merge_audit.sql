-- Per-field merge state (see the Postgres migration).
ALTER TABLE records ADD COLUMN field_times TEXT NOT NULL DEFAULT '{}';
ALTER TABLE connections ADD COLUMN webhook_secret BLOB;

CREATE TABLE conflicts (
    id                  BLOB PRIMARY KEY,
    tenant_id           BLOB NOT NULL REFERENCES tenants (id),
    connection_id       BLOB NOT NULL REFERENCES connections (id),
    record_id           BLOB NOT NULL REFERENCES records (id),
    crm_object          TEXT NOT NULL,
    crm_id              TEXT NOT NULL,
    field               TEXT NOT NULL,
    base_value          TEXT,
    platform_value      TEXT,
    crm_value           TEXT,
    platform_changed_at TEXT,
    crm_changed_at      TEXT,
    status              TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    resolution          TEXT,
    resolved_value      TEXT,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    resolved_at         TEXT
);
CREATE UNIQUE INDEX conflicts_one_open ON conflicts (connection_id, record_id, field) WHERE status = 'open';
CREATE INDEX conflicts_by_tenant ON conflicts (tenant_id, status, created_at);

CREATE TABLE field_changes (
    id            BLOB PRIMARY KEY,
    tenant_id     BLOB NOT NULL REFERENCES tenants (id),
    record_id     BLOB NOT NULL REFERENCES records (id),
    connection_id BLOB NOT NULL REFERENCES connections (id),
    field         TEXT NOT NULL,
    rule          TEXT NOT NULL,
    old_value     TEXT,
    new_value     TEXT,
    source        TEXT NOT NULL,
    decided_at    TEXT NOT NULL
);
CREATE INDEX field_changes_by_record ON field_changes (record_id, decided_at);
