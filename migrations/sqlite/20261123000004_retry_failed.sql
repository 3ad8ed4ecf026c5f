-- RetryFailed: re-drive counts and who replayed (see the Postgres migration).
ALTER TABLE dead_letters ADD COLUMN redrives INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letters ADD COLUMN replayed_by TEXT;
CREATE INDEX dead_letters_redrivable ON dead_letters (tenant_id, redrives, id) WHERE replayed_at IS NULL;
