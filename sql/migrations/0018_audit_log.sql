-- The audit log as the API writes it: one row per change made through the API, in the change's transaction.
-- Rows outlive what they describe (the row saying who deleted tenant 5 stays), so no foreign key to tenants.
ALTER TABLE audit_log DROP CONSTRAINT IF EXISTS audit_log_tenant_id_fkey;
DROP INDEX IF EXISTS audit_log_tenant;
ALTER TABLE audit_log DROP COLUMN subject;
ALTER TABLE audit_log RENAME COLUMN detail TO summary;
-- the API key that acted (NULL for the admin key and for public routes; `actor` says which)
ALTER TABLE audit_log ADD COLUMN key_id bigint REFERENCES api_keys (id) ON DELETE SET NULL;
ALTER TABLE audit_log ADD COLUMN method text NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN path text NOT NULL DEFAULT '';
-- the route's path parameters: which tenant, campaign, IP... the change was made to
ALTER TABLE audit_log ADD COLUMN target jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE audit_log ADD COLUMN request_id text NOT NULL DEFAULT '';
-- Keyset pages newest first, per tenant (a tenant's log) and overall (the admin's).
CREATE INDEX audit_log_tenant_id ON audit_log (tenant_id, id);
CREATE INDEX audit_log_action_id ON audit_log (action, id);
