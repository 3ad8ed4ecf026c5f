-- The periodic jobs (detect_conflicts, health_check, retry_failed,
-- cleanup_logs) record their runs in sync_runs too, so an operator sees
-- every job in one list. Their runs are about a connection, not one CRM
-- object (crm_object NULL), and their counts differ per kind: a JSON object
-- of named counts, e.g. {"checked": 0, "drifted": 0, "repaired": 0,
-- "conflicts": 0}. Sync runs keep their columns and leave counts NULL.
ALTER TABLE sync_runs ALTER COLUMN crm_object DROP NOT NULL;
ALTER TABLE sync_runs ADD COLUMN counts jsonb;
