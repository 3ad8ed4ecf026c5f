-- The provider contract (issue #14); see the Postgres migration of the same
-- name for the reasons.

-- SQLite cannot change a primary key in place: the cursors move to a new
-- table with the feed in the key.
CREATE TABLE sync_cursors_new (
    tenant_id     BLOB NOT NULL REFERENCES tenants (id),
    connection_id BLOB NOT NULL REFERENCES connections (id),
    crm_object    TEXT NOT NULL,
    feed          TEXT NOT NULL DEFAULT 'changes',
    modified_at   TEXT NOT NULL,
    crm_id        TEXT NOT NULL,
    position      TEXT,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (connection_id, crm_object, feed)
);
INSERT INTO sync_cursors_new (tenant_id, connection_id, crm_object, feed, modified_at, crm_id, position, updated_at)
    SELECT tenant_id, connection_id, crm_object, 'changes', modified_at, crm_id, NULL, updated_at FROM sync_cursors;
DROP TABLE sync_cursors;
ALTER TABLE sync_cursors_new RENAME TO sync_cursors;

ALTER TABLE connections ADD COLUMN instance_url TEXT;
ALTER TABLE connections ADD COLUMN own_identity TEXT;
ALTER TABLE connections ADD COLUMN provider_state TEXT NOT NULL DEFAULT '{}';
ALTER TABLE connections ADD COLUMN subscription TEXT NOT NULL DEFAULT '{}';
ALTER TABLE connections RENAME COLUMN webhook_secret TO webhook_credential;
ALTER TABLE connections ADD COLUMN webhook_credential_kind TEXT
    CHECK (webhook_credential_kind IN ('hmac_secret', 'basic', 'channel_token', 'key'));
UPDATE connections SET webhook_credential_kind = 'hmac_secret' WHERE webhook_credential IS NOT NULL;
