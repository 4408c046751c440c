-- name: identities-get-tenant
-- The tenant's own sender identity (every field NULL when none was set).
-- returns: SenderIdentity
SELECT i.sender_name, i.sender_company, i.sender_address, i.sender_website
FROM tenants t
LEFT JOIN sender_identities i ON i.tenant_id = t.id AND i.campaign_id IS NULL
WHERE t.id = $1;

-- name: identities-get-campaign
-- A campaign's own overrides (NULL: the tenant's value applies); no row when the campaign is not the tenant's.
-- returns: SenderIdentity
SELECT i.sender_name, i.sender_company, i.sender_address, i.sender_website
FROM campaigns c
LEFT JOIN sender_identities i ON i.campaign_id = c.id
WHERE c.tenant_id = $1 AND c.id = $2;

-- name: identities-resolve
-- What a message shows: the campaign's value where it has one, else the tenant's. $2 NULL: the tenant's alone.
-- returns: SenderIdentity
SELECT COALESCE(c.sender_name, t.sender_name) AS sender_name,
       COALESCE(c.sender_company, t.sender_company) AS sender_company,
       COALESCE(c.sender_address, t.sender_address) AS sender_address,
       COALESCE(c.sender_website, t.sender_website) AS sender_website
FROM (SELECT $1::bigint AS tenant_id) k
LEFT JOIN sender_identities t ON t.tenant_id = k.tenant_id AND t.campaign_id IS NULL
LEFT JOIN sender_identities c ON c.tenant_id = k.tenant_id AND c.campaign_id = $2::bigint;

-- name: identities-put-tenant
-- Replace the tenant's identity (absent fields become NULL); nothing when the tenant does not exist.
-- returns: SenderIdentity
INSERT INTO sender_identities (tenant_id, campaign_id, sender_name, sender_company, sender_address, sender_website)
SELECT id, NULL, $2, $3, $4, $5 FROM tenants WHERE id = $1
ON CONFLICT (tenant_id) WHERE campaign_id IS NULL DO UPDATE
SET sender_name = EXCLUDED.sender_name, sender_company = EXCLUDED.sender_company,
    sender_address = EXCLUDED.sender_address, sender_website = EXCLUDED.sender_website, updated_at = now()
RETURNING sender_name, sender_company, sender_address, sender_website;

-- name: identities-put-campaign
-- Replace a campaign's overrides; nothing when the campaign is not the tenant's.
-- returns: SenderIdentity
INSERT INTO sender_identities (tenant_id, campaign_id, sender_name, sender_company, sender_address, sender_website)
SELECT tenant_id, id, $3, $4, $5, $6 FROM campaigns WHERE tenant_id = $1 AND id = $2
ON CONFLICT (campaign_id) WHERE campaign_id IS NOT NULL DO UPDATE
SET sender_name = EXCLUDED.sender_name, sender_company = EXCLUDED.sender_company,
    sender_address = EXCLUDED.sender_address, sender_website = EXCLUDED.sender_website, updated_at = now()
RETURNING sender_name, sender_company, sender_address, sender_website;

-- name: identities-seed-tenant
-- The seed's identity, only when the tenant has none: an operator's edits survive a re-run.
INSERT INTO sender_identities (tenant_id, campaign_id, sender_name, sender_company, sender_address, sender_website)
VALUES ($1, NULL, $2, $3, $4, $5)
ON CONFLICT (tenant_id) WHERE campaign_id IS NULL DO NOTHING;
