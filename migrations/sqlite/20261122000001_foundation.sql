-- crmsync foundation for the embedded store: the same tables as Postgres.
-- SQLite has no row-level security; every query filters by tenant_id anyway.

CREATE TABLE tenants (
    id               BLOB PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    api_token_hash   BLOB NOT NULL,
    allow_duplicates BOOLEAN NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL
);

CREATE TABLE connections (
    id                  BLOB PRIMARY KEY,
    tenant_id           BLOB NOT NULL REFERENCES tenants (id),
    provider            TEXT NOT NULL,
    external_account_id TEXT NOT NULL,
    credentials         BLOB NOT NULL,
    settings            TEXT NOT NULL,
    status              TEXT NOT NULL,
    status_reason       TEXT,
    delta_interval_secs INTEGER NOT NULL CHECK (delta_interval_secs > 0),
    next_delta_at       TEXT,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    UNIQUE (tenant_id, provider, external_account_id)
);

CREATE TABLE records (
    id              BLOB PRIMARY KEY,
    tenant_id       BLOB NOT NULL REFERENCES tenants (id),
    kind            TEXT NOT NULL,
    fields          TEXT NOT NULL,
    dedupe_key      TEXT,
    origin          TEXT NOT NULL,
    origin_provider TEXT,
    origin_crm_id   TEXT,
    version         INTEGER NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    deleted_at      TEXT
);
CREATE UNIQUE INDEX records_one_per_email ON records (tenant_id, kind, dedupe_key);

CREATE TABLE record_links (
    id                 BLOB PRIMARY KEY,
    tenant_id          BLOB NOT NULL REFERENCES tenants (id),
    record_id          BLOB NOT NULL REFERENCES records (id),
    connection_id      BLOB NOT NULL REFERENCES connections (id),
    crm_object         TEXT NOT NULL,
    crm_id             TEXT NOT NULL,
    base               TEXT NOT NULL,
    pulled_fingerprint TEXT,
    pushed_fingerprint TEXT,
    crm_modified_at    TEXT,
    local_modified_at  TEXT,
    crm_deleted_at     TEXT,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    UNIQUE (connection_id, crm_object, crm_id)
);
CREATE INDEX record_links_by_record ON record_links (record_id);

CREATE TABLE sync_cursors (
    tenant_id     BLOB NOT NULL REFERENCES tenants (id),
    connection_id BLOB NOT NULL REFERENCES connections (id),
    crm_object    TEXT NOT NULL,
    modified_at   TEXT NOT NULL,
    crm_id        TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (connection_id, crm_object)
);

CREATE TABLE sync_runs (
    id            BLOB PRIMARY KEY,
    tenant_id     BLOB NOT NULL REFERENCES tenants (id),
    connection_id BLOB NOT NULL REFERENCES connections (id),
    crm_object    TEXT NOT NULL,
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
    updated_at    TEXT NOT NULL
);
CREATE INDEX sync_runs_latest ON sync_runs (connection_id, started_at DESC);
