-- Jobs that failed for good (a permanent error, or retries exhausted),
-- with the job itself, so that an operator sees why and can replay it.
CREATE TABLE dead_letters (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    connection_id uuid NOT NULL REFERENCES connections (id),
    job_kind      text NOT NULL,
    job           jsonb NOT NULL,
    error         text NOT NULL,
    attempts      bigint NOT NULL,
    failed_at     timestamptz NOT NULL,
    replayed_at   timestamptz
);
CREATE INDEX dead_letters_open ON dead_letters (tenant_id, id) WHERE replayed_at IS NULL;
ALTER TABLE dead_letters ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON dead_letters
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON dead_letters TO crmsync_app;
