-- The detect_conflicts sweep pages through every CRM record of a synced
-- object; a pass can outlast one job, so where it stands is kept per
-- connection and object: the pass's generation, the list page token to
-- continue from (NULL with in_pass: the first page) and when the pass began.
-- Each link the pass sees is stamped with the generation; after a complete
-- pass, links created before it began that carry another stamp were not in
-- the CRM's list: their record is gone with no event, and they are
-- tombstoned.
CREATE TABLE sweep_checkpoints (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    connection_id   uuid NOT NULL REFERENCES connections (id),
    crm_object      text NOT NULL,
    generation      bigint NOT NULL,
    in_pass         boolean NOT NULL,
    page_token      text,
    pass_started_at timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (connection_id, crm_object)
);
ALTER TABLE sweep_checkpoints ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sweep_checkpoints
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON sweep_checkpoints TO crmsync_app;
ALTER TABLE record_links ADD COLUMN swept_generation bigint;
