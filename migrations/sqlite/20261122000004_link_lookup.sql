-- A push looks up each pending record's link on its connection (see the
-- Postgres migration of the same name).
CREATE INDEX record_links_by_connection_record
    ON record_links (connection_id, crm_object, record_id)
    WHERE crm_deleted_at IS NULL;
