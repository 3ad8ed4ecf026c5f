-- RetryFailed: how often the scheduler has re-driven a dead letter's chain of
-- failures (at most `sync.retry_failed_max_redrives`), and who replayed it.
ALTER TABLE dead_letters ADD COLUMN redrives bigint NOT NULL DEFAULT 0;
ALTER TABLE dead_letters ADD COLUMN replayed_by text;
CREATE INDEX dead_letters_redrivable ON dead_letters (tenant_id, redrives, id) WHERE replayed_at IS NULL;
