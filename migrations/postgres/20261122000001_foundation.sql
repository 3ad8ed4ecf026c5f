-- crmsync foundation: tenants, connections, records, links, cursors, runs.
-- Run as the table owner (`crmsync migrate`); the processes connect as a
-- member of crmsync_app, which neither owns these tables nor bypasses RLS.

-- Roles are cluster-wide: several databases (or concurrent migrations) may
-- race to create it, so a duplicate is not an error.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'crmsync_app') THEN
        CREATE ROLE crmsync_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

CREATE TABLE tenants (
    id               uuid PRIMARY KEY,
    name             text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    api_token_hash   bytea NOT NULL,
    allow_duplicates boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL
);

CREATE TABLE connections (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES tenants (id),
    provider            text NOT NULL,
    external_account_id text NOT NULL,
    credentials         bytea NOT NULL,
    settings            jsonb NOT NULL,
    status              text NOT NULL,
    status_reason       text,
    delta_interval_secs bigint NOT NULL CHECK (delta_interval_secs > 0),
    next_delta_at       timestamptz,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    UNIQUE (tenant_id, provider, external_account_id)
);

CREATE TABLE records (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    kind            text NOT NULL,
    fields          jsonb NOT NULL,
    -- The normalised email when the tenant forbids duplicates, else NULL:
    -- the unique index below then makes a duplicate impossible.
    dedupe_key      text,
    origin          text NOT NULL,
    origin_provider text,
    origin_crm_id   text,
    version         bigint NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    deleted_at      timestamptz
);
CREATE UNIQUE INDEX records_one_per_email ON records (tenant_id, kind, dedupe_key);

CREATE TABLE record_links (
    id                 uuid PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants (id),
    record_id          uuid NOT NULL REFERENCES records (id),
    connection_id      uuid NOT NULL REFERENCES connections (id),
    crm_object         text NOT NULL,
    crm_id             text NOT NULL,
    base               jsonb NOT NULL,
    pulled_fingerprint text,
    pushed_fingerprint text,
    crm_modified_at    timestamptz,
    local_modified_at  timestamptz,
    crm_deleted_at     timestamptz,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    UNIQUE (connection_id, crm_object, crm_id)
);
CREATE INDEX record_links_by_record ON record_links (record_id);

CREATE TABLE sync_cursors (
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    connection_id uuid NOT NULL REFERENCES connections (id),
    crm_object    text NOT NULL,
    modified_at   timestamptz NOT NULL,
    crm_id        text NOT NULL,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (connection_id, crm_object)
);

CREATE TABLE sync_runs (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    connection_id uuid NOT NULL REFERENCES connections (id),
    crm_object    text NOT NULL,
    kind          text NOT NULL,
    direction     text NOT NULL,
    status        text NOT NULL,
    page_token    text,
    pages_done    bigint NOT NULL DEFAULT 0,
    processed     bigint NOT NULL DEFAULT 0,
    created       bigint NOT NULL DEFAULT 0,
    updated       bigint NOT NULL DEFAULT 0,
    unchanged     bigint NOT NULL DEFAULT 0,
    failed        bigint NOT NULL DEFAULT 0,
    error         text,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX sync_runs_latest ON sync_runs (connection_id, started_at DESC);

-- Row-level security: a session sees only the tenant it set with
-- set_config('app.tenant_id', …, true) inside its transaction.
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['connections', 'records', 'record_links', 'sync_cursors', 'sync_runs'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)', t);
    END LOOP;
END
$$;
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);

-- The few cross-tenant reads the fleet needs, as owner-run functions that
-- return ids only (never rows): the scheduler's claim of due deltas, the
-- operator's tenant lookup and connection directory.
CREATE FUNCTION crmsync_tenant_lookup(name_or_id text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT id FROM public.tenants WHERE name = name_or_id OR id::text = name_or_id
    ORDER BY (name = name_or_id) DESC LIMIT 1
$$;

CREATE FUNCTION crmsync_connection_directory()
RETURNS TABLE (tenant_id uuid, connection_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT tenant_id, id FROM public.connections ORDER BY created_at, id
$$;

-- Claims every active connection whose delta is due and moves its next due
-- time one interval on, in one statement: two schedulers never claim one tick.
CREATE FUNCTION crmsync_claim_due_deltas(at timestamptz)
RETURNS TABLE (tenant_id uuid, connection_id uuid)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    UPDATE public.connections
       SET next_delta_at = at + make_interval(secs => delta_interval_secs)
     WHERE status = 'active' AND (next_delta_at IS NULL OR next_delta_at <= at)
    RETURNING tenant_id, id
$$;

REVOKE ALL ON FUNCTION crmsync_tenant_lookup(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION crmsync_connection_directory() FROM PUBLIC;
REVOKE ALL ON FUNCTION crmsync_claim_due_deltas(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION crmsync_tenant_lookup(text) TO crmsync_app;
GRANT EXECUTE ON FUNCTION crmsync_connection_directory() TO crmsync_app;
GRANT EXECUTE ON FUNCTION crmsync_claim_due_deltas(timestamptz) TO crmsync_app;

GRANT USAGE ON SCHEMA public TO crmsync_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON
    tenants, connections, records, record_links, sync_cursors, sync_runs
    TO crmsync_app;
