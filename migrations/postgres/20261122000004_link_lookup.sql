-- A push looks up each pending record's link on its connection. Without
-- this index Postgres took the (connection, object, crm id) unique index
-- and filtered every link of the connection per outbox row (~1 ms each,
-- 150-400 ms per batch of 100 in the two-way benchmark).
CREATE INDEX record_links_by_connection_record
    ON record_links (connection_id, crm_object, record_id)
    WHERE crm_deleted_at IS NULL;
