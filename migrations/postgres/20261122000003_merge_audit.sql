-- Per-field merge state: when each platform field changed (newest_wins),
-- conflicts held for an operator (manual), the audit of every field a sync
-- changed and the rule that decided it, and per-connection webhook secrets.

ALTER TABLE records ADD COLUMN field_times jsonb NOT NULL DEFAULT '{}';

-- Sealed like the credentials (bound to the connection's ids).
ALTER TABLE connections ADD COLUMN webhook_secret bytea;

CREATE TABLE conflicts (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES tenants (id),
    connection_id       uuid NOT NULL REFERENCES connections (id),
    record_id           uuid NOT NULL REFERENCES records (id),
    crm_object          text NOT NULL,
    crm_id              text NOT NULL,
    field               text NOT NULL,
    base_value          text,
    platform_value      text,
    crm_value           text,
    platform_changed_at timestamptz,
    crm_changed_at      timestamptz,
    status              text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    resolution          text,
    resolved_value      text,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    resolved_at         timestamptz
);
-- At most one open conflict per field: a re-detected conflict refreshes it.
CREATE UNIQUE INDEX conflicts_one_open ON conflicts (connection_id, record_id, field) WHERE status = 'open';
CREATE INDEX conflicts_by_tenant ON conflicts (tenant_id, status, created_at);

CREATE TABLE field_changes (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    record_id     uuid NOT NULL REFERENCES records (id),
    connection_id uuid NOT NULL REFERENCES connections (id),
    field         text NOT NULL,
    rule          text NOT NULL,
    old_value     text,
    new_value     text,
    source        text NOT NULL,
    decided_at    timestamptz NOT NULL
);
CREATE INDEX field_changes_by_record ON field_changes (record_id, decided_at);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['conflicts', 'field_changes'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)', t);
    END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON conflicts, field_changes TO crmsync_app;
