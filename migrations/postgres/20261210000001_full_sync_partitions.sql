-- A full sync lists its object in partitions (id ranges where the CRM can
-- filter by id; the whole list where it cannot), each a chain of pages
-- with its own token and count, so several pages are in flight at once and
-- a killed page resumes alone. A page commits only while its partition has
-- done exactly that many pages; the run succeeds with its last partition.
-- Runs started before this migration get one `whole` partition carrying
-- their page token and count when their next page job runs.
CREATE TABLE sync_run_partitions (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    run_id      uuid NOT NULL REFERENCES sync_runs (id) ON DELETE CASCADE,
    partition   integer NOT NULL,
    by_ids      boolean NOT NULL,
    ids_after   text,
    ids_through text,
    page_token  text,
    pages_done  bigint NOT NULL DEFAULT 0,
    finished    boolean NOT NULL DEFAULT FALSE,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (run_id, partition)
);
ALTER TABLE sync_run_partitions ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sync_run_partitions
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON sync_run_partitions TO crmsync_app;
