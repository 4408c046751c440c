-- name: add-suppressions
-- One set-based upsert for a whole batch. A value already listed keeps its row (and created_at: when it was
-- first suppressed); its reason is replaced only by a stronger one ($5 lists reasons weakest first), so a
-- complaint upgrades a manual entry but an unsubscribe never downgrades a complaint. xmax = 0 tells a fresh
-- insert from an update; values neither inserted nor upgraded are not returned at all.
INSERT INTO suppressions (tenant_id, value, reason, source)
SELECT $1, v.value, $3::suppression_reason, $4
FROM unnest($2::text[]) AS v(value)
ON CONFLICT (tenant_id, value) DO UPDATE SET reason = EXCLUDED.reason, source = EXCLUDED.source
WHERE array_position($5::text[], EXCLUDED.reason::text) > array_position($5::text[], suppressions.reason::text)
RETURNING value, (xmax = 0) AS inserted;

-- name: list-suppressions
-- returns: Suppression
-- Keyset pages in id order: each page starts after the last id seen, so deep pages cost what the first does.
SELECT id, tenant_id, value, is_domain, reason::text AS reason, source, created_at
FROM suppressions
WHERE tenant_id = $1 AND id > $2 AND ($3::suppression_reason IS NULL OR reason = $3::suppression_reason)
ORDER BY id
LIMIT $4;

-- name: check-suppression
-- returns: Suppression
-- The address's own entry wins over its domain's (it says more about this person); both are probes of the
-- unique (tenant_id, value) index. Parent domains are not matched: "mail.example.com" does not cover
-- "example.com" nor the reverse, because a company's subdomains are often run by different people.
SELECT id, tenant_id, value, is_domain, reason::text AS reason, source, created_at
FROM suppressions
WHERE tenant_id = $1 AND value = ANY(ARRAY[$2::text, $3::text])
ORDER BY is_domain
LIMIT 1;

-- name: remove-suppression
DELETE FROM suppressions WHERE tenant_id = $1 AND value = $2
RETURNING id;

-- name: suppressed-among
-- The dispatcher's filter, one query per batch: each address is looked up in the unique index, once for
-- itself and once for its domain (everything after the last "@"). Addresses come in normalised, as contacts
-- store them. Two EXISTS, not one `value = ANY(ARRAY[...])`: without statistics (a list just filled, not yet
-- analyzed by autovacuum) the ANY form is planned as a nested loop comparing every address with every entry:
-- 6 s for 10,000 addresses against 1,430 entries, where this form takes 10-20 ms with or without them.
SELECT e.email
FROM unnest($2::text[]) AS e(email)
WHERE EXISTS (SELECT 1 FROM suppressions s WHERE s.tenant_id = $1 AND s.value = e.email)
   OR EXISTS (SELECT 1 FROM suppressions s WHERE s.tenant_id = $1 AND s.value = substring(e.email FROM '[^@]*$'));

-- name: suppression-mark-contacts
-- Contacts whose address was just suppressed take the matching status, in one statement. $4 are statuses
-- left alone: erased (nothing to mark) and those at least as strong as the new one (a complained contact
-- does not become merely unsubscribed). Matched on the dedup hash, which the unique index serves.
WITH target AS (
    SELECT id, status::text AS old_status
    FROM contacts
    WHERE tenant_id = $1 AND email_hash = ANY($2::bytea[]) AND NOT (status::text = ANY($4::text[]))
    FOR UPDATE
)
UPDATE contacts c SET status = $3::contact_status, updated_at = now()
FROM target t
WHERE c.id = t.id
RETURNING c.id, t.old_status;

-- name: suppression-mailwizz-instances
-- Where a MailWizz tenant's unsubscribes must be repeated: every active install (one without a key is
-- logged and skipped by the job).
SELECT id, base_url, api_version, public_key_enc, private_key_enc
FROM mailwizz_instances
WHERE tenant_id = $1 AND active
ORDER BY id;
