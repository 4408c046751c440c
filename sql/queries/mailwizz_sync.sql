-- name: mailwizz-get-config
-- The tenant's MailWizz install as the API shows it: whether keys are stored, never the keys. A tenant may
-- hold several installs (unsubscribes go to all); the engine pushes and sends through the oldest active one.
-- returns: MailWizzConfig
SELECT tenant_id, name, base_url, api_version::int AS api_version, public_key_enc IS NOT NULL AS has_public_key,
       private_key_enc IS NOT NULL AS has_private_key, list_uid, active, created_at
FROM mailwizz_instances
WHERE tenant_id = $1 AND active
ORDER BY id
LIMIT 1;

-- name: mailwizz-install
-- The same install with its encrypted keys, for building a client (workers only).
-- returns: Install
SELECT id, tenant_id, base_url, api_version::int AS api_version, public_key_enc, private_key_enc, list_uid
FROM mailwizz_instances
WHERE tenant_id = $1 AND active
ORDER BY id
LIMIT 1;

-- name: mailwizz-update-config
-- An omitted private key keeps the stored one ($5 NULL), so rotating the public key alone is one call.
UPDATE mailwizz_instances
SET base_url = $3, api_version = $4, private_key_enc = coalesce($5, private_key_enc), public_key_enc = $6,
    list_uid = $7
WHERE tenant_id = $1 AND id = $2
RETURNING id;

-- name: mailwizz-insert-config
INSERT INTO mailwizz_instances (tenant_id, name, base_url, api_version, private_key_enc, public_key_enc, list_uid)
VALUES ($1, 'MailWizz', $2, $3, $4, $5, $6)
RETURNING id;

-- name: mailwizz-install-id
-- Row-locked so two concurrent PUTs for one tenant update the same install instead of racing an insert.
SELECT id FROM mailwizz_instances WHERE tenant_id = $1 AND active ORDER BY id LIMIT 1 FOR UPDATE;

-- name: mailwizz-outbox-take
-- Takes a batch of the tenant's outbox inside the caller's transaction: a failed push rolls back and the
-- rows are still there; SKIP LOCKED lets two workers drain one tenant without taking the same rows.
-- returns: PushContact
WITH taken AS (
    DELETE FROM mailwizz_outbox o
    WHERE o.contact_id IN (SELECT contact_id FROM mailwizz_outbox WHERE tenant_id = $1
                           ORDER BY queued_at, contact_id LIMIT $2 FOR UPDATE SKIP LOCKED)
    RETURNING o.contact_id
)
SELECT c.id, c.email, c.first_name, c.last_name, c.company, c.website, c.country, c.language, c.category,
       c.status::text AS status, c.mailwizz_subscriber_uid,
       coalesce((SELECT string_agg(t.slug, ',' ORDER BY t.slug) FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id
                 WHERE ct.contact_id = c.id), '') AS tags
FROM taken JOIN contacts c ON c.id = taken.contact_id AND c.tenant_id = $1
ORDER BY c.id;

-- name: mailwizz-contacts-by-id
-- Contacts a campaign must make sure are subscribers (same shape as an outbox batch).
-- returns: PushContact
SELECT c.id, c.email, c.first_name, c.last_name, c.company, c.website, c.country, c.language, c.category,
       c.status::text AS status, c.mailwizz_subscriber_uid,
       coalesce((SELECT string_agg(t.slug, ',' ORDER BY t.slug) FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id
                 WHERE ct.contact_id = c.id), '') AS tags
FROM contacts c
WHERE c.tenant_id = $1 AND c.id = ANY($2::bigint[])
ORDER BY c.id;

-- name: mailwizz-set-subscriber-uids
UPDATE contacts c SET mailwizz_subscriber_uid = u.uid, updated_at = now()
FROM unnest($2::bigint[], $3::text[]) AS u(id, uid)
WHERE c.tenant_id = $1 AND c.id = u.id;

-- name: mailwizz-outbox-tenants
-- Tenants with contacts waiting to be pushed (the minute cron's work list).
SELECT DISTINCT tenant_id FROM mailwizz_outbox ORDER BY tenant_id;

-- name: mailwizz-try-lock
-- One worker at a time per key (a campaign, a tenant's push); released with the session if a worker dies.
SELECT pg_try_advisory_lock(hashtextextended($1, 0));

-- name: mailwizz-unlock
SELECT pg_advisory_unlock(hashtextextended($1, 0));

-- name: mailwizz-list-tenants
-- Tenants whose active install holds a key and names a list or has sent campaign waves (each with a list of
-- its own): the unsubscribe pull walks those lists.
SELECT DISTINCT i.tenant_id FROM mailwizz_instances i
WHERE i.active AND i.public_key_enc IS NOT NULL
  AND (i.list_uid IS NOT NULL
       OR EXISTS (SELECT 1 FROM mailwizz_campaigns g WHERE g.tenant_id = i.tenant_id AND g.list_uid IS NOT NULL))
ORDER BY i.tenant_id;
