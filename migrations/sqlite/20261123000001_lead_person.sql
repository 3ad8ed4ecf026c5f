-- A HubSpot lead's person lives on its primary contact. The lead's link
-- remembers which contact that is, so that a privacy deletion of the
-- contact (after which HubSpot no longer says whose leads it had) can
-- still erase the platform lead.
ALTER TABLE record_links ADD COLUMN person_crm_id TEXT;
CREATE INDEX record_links_by_person
    ON record_links (connection_id, crm_object, person_crm_id)
    WHERE person_crm_id IS NOT NULL;
