-- The provider contract (issue #14): what any CRM's connection and change
-- feed needs beside HubSpot's.
--
-- Cursors: a feed name in the key (`changes` today; `deletes`, `cdc` for
-- CRMs with a delete log or an event stream) and the adapter's opaque
-- position (a delta token, a replay id) beside the watermark the core
-- orders and reports lag by.
ALTER TABLE sync_cursors ADD COLUMN feed text NOT NULL DEFAULT 'changes';
ALTER TABLE sync_cursors ADD COLUMN position jsonb;
ALTER TABLE sync_cursors DROP CONSTRAINT sync_cursors_pkey;
ALTER TABLE sync_cursors ADD PRIMARY KEY (connection_id, crm_object, feed);

-- Connections: the instance the account lives on (Salesforce instance_url,
-- Zoho api_domain, Pipedrive company domain, Dynamics org URL), crmsync's
-- own identity there (integration user, app id: the echo marker), state the
-- adapter keeps (field keys, ensured schema), the webhook subscription
-- (channel id, expiry, webhook id), and a tagged webhook credential in place
-- of the one HMAC secret. Existing secrets carry over as `hmac_secret`.
ALTER TABLE connections ADD COLUMN instance_url text;
ALTER TABLE connections ADD COLUMN own_identity text;
ALTER TABLE connections ADD COLUMN provider_state jsonb NOT NULL DEFAULT '{}';
ALTER TABLE connections ADD COLUMN subscription jsonb NOT NULL DEFAULT '{}';
ALTER TABLE connections RENAME COLUMN webhook_secret TO webhook_credential;
ALTER TABLE connections ADD COLUMN webhook_credential_kind text
    CHECK (webhook_credential_kind IN ('hmac_secret', 'basic', 'channel_token', 'key'));
UPDATE connections SET webhook_credential_kind = 'hmac_secret' WHERE webhook_credential IS NOT NULL;
ALTER TABLE connections ADD CONSTRAINT connections_webhook_credential_tagged
    CHECK ((webhook_credential IS NULL) = (webhook_credential_kind IS NULL));
