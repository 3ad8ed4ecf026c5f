-- Parked records: a record the CRM or the store refuses is kept out of its
-- batch so the rest goes through. It is a dead letter of its own
-- (`pull_record`: a CRM record the platform refused; `push_record`: a
-- platform record the CRM refused), naming the record; a push's outbox rows
-- wait with status 'parked' until the record is fixed or replayed.
ALTER TABLE dead_letters ADD COLUMN crm_object text;
ALTER TABLE dead_letters ADD COLUMN crm_id text;
ALTER TABLE dead_letters ADD COLUMN record_id uuid;
CREATE INDEX dead_letters_parked_crm ON dead_letters (connection_id, crm_object, crm_id)
    WHERE replayed_at IS NULL AND crm_id IS NOT NULL;
CREATE INDEX dead_letters_parked_record ON dead_letters (connection_id, record_id)
    WHERE replayed_at IS NULL AND record_id IS NOT NULL;
CREATE INDEX outbox_parked ON outbox (connection_id, record_id) WHERE status = 'parked';
