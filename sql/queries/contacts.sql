-- name: contacts-known-tenants
-- Which of the tenant ids a batch names exist (the admin key may ingest for any tenant).
SELECT id FROM tenants WHERE id = ANY($1::bigint[]);

-- name: contacts-source-owners
-- The tenant of each data source a batch names: a contact may only cite its own tenant's sources.
SELECT id, tenant_id FROM data_sources WHERE id = ANY($1::bigint[]);

-- name: upsert-contacts
-- The whole batch in one statement: insert new addresses, merge known ones (incoming non-null fields win,
-- custom fields are merged, the first data source stays), leave erased ones alone, and record an event per
-- created or changed contact. `xmax = 0` tells an inserted row from an updated one; the `old` CTE reads the
-- snapshot from before the statement, so it holds the previous values (and the erased status) of known rows.
-- `old` probes the unique index once per input row (the LIMIT keeps the planner from flattening the lateral
-- join): as a join it was planned as a hash over a sequential scan of every contact, which made each batch
-- slower than the last (0.2 s of a 0.35 s batch at 200,000 contacts).
-- The batch is deduplicated by the caller: ON CONFLICT may not touch one row twice in a statement.
-- The rows come as one JSON array of objects ($1, text: whatever jsonb codec the connection has; a field left
-- out is NULL, the hash is hex), which costs the worker a fraction of encoding one array per column.
WITH input AS (
    SELECT i.tenant_id, i.data_source_id, i.email, decode(i.email_hash, 'hex') AS email_hash, i.first_name,
           i.last_name, i.company, i.website, i.country, i.language, i.category, i.custom, i.ord
    FROM ROWS FROM (jsonb_to_recordset($1::text::jsonb)
                    AS (tenant_id bigint, data_source_id bigint, email text, email_hash text, first_name text,
                        last_name text, company text, website text, country text, language text, category text,
                        custom jsonb))
         WITH ORDINALITY AS i(tenant_id, data_source_id, email, email_hash, first_name, last_name, company,
                              website, country, language, category, custom, ord)
),
old AS (
    SELECT o.*
    FROM input i
    CROSS JOIN LATERAL (
        SELECT c.id, c.tenant_id, c.email_hash, c.status, c.first_name, c.last_name, c.company, c.website,
               c.country, c.language, c.category, c.custom
        FROM contacts c WHERE c.tenant_id = i.tenant_id AND c.email_hash = i.email_hash
        LIMIT 1
    ) o
),
up AS (
    INSERT INTO contacts AS c (tenant_id, data_source_id, email, email_hash, first_name, last_name, company,
                               website, country, language, category, custom)
    SELECT tenant_id, data_source_id, email, email_hash, first_name, last_name, company, website, country,
           language, category, coalesce(custom, '{}'::jsonb)
    FROM input
    ON CONFLICT (tenant_id, email_hash) DO UPDATE SET
        data_source_id = coalesce(c.data_source_id, excluded.data_source_id),
        first_name = coalesce(excluded.first_name, c.first_name),
        last_name = coalesce(excluded.last_name, c.last_name),
        company = coalesce(excluded.company, c.company),
        website = coalesce(excluded.website, c.website),
        country = coalesce(excluded.country, c.country),
        language = coalesce(excluded.language, c.language),
        category = coalesce(excluded.category, c.category),
        custom = c.custom || excluded.custom,
        updated_at = now()
    WHERE c.status <> 'erased'
      AND (c.data_source_id, c.first_name, c.last_name, c.company, c.website, c.country, c.language,
           c.category, c.custom)
          IS DISTINCT FROM
          (coalesce(c.data_source_id, excluded.data_source_id), coalesce(excluded.first_name, c.first_name),
           coalesce(excluded.last_name, c.last_name), coalesce(excluded.company, c.company),
           coalesce(excluded.website, c.website), coalesce(excluded.country, c.country),
           coalesce(excluded.language, c.language), coalesce(excluded.category, c.category),
           c.custom || excluded.custom)
    RETURNING c.id, c.tenant_id, c.email_hash, (c.xmax = 0) AS created
),
events AS (
    INSERT INTO contact_events (contact_id, tenant_id, kind, detail)
    SELECT up.id, up.tenant_id,
           CASE WHEN up.created THEN 'created' ELSE 'updated' END,
           CASE WHEN up.created THEN jsonb_build_object('data_source_id', i.data_source_id)
           ELSE jsonb_build_object('fields', to_jsonb(array_remove(ARRAY[
               CASE WHEN i.first_name IS DISTINCT FROM o.first_name AND i.first_name IS NOT NULL THEN 'first_name' END,
               CASE WHEN i.last_name IS DISTINCT FROM o.last_name AND i.last_name IS NOT NULL THEN 'last_name' END,
               CASE WHEN i.company IS DISTINCT FROM o.company AND i.company IS NOT NULL THEN 'company' END,
               CASE WHEN i.website IS DISTINCT FROM o.website AND i.website IS NOT NULL THEN 'website' END,
               CASE WHEN i.country IS DISTINCT FROM o.country AND i.country IS NOT NULL THEN 'country' END,
               CASE WHEN i.language IS DISTINCT FROM o.language AND i.language IS NOT NULL THEN 'language' END,
               CASE WHEN i.category IS DISTINCT FROM o.category AND i.category IS NOT NULL THEN 'category' END,
               CASE WHEN i.custom IS NOT NULL AND o.custom || i.custom <> o.custom THEN 'custom' END
           ], NULL))) END
    FROM up
    JOIN input i ON i.tenant_id = up.tenant_id AND i.email_hash = up.email_hash
    LEFT JOIN old o ON o.tenant_id = up.tenant_id AND o.email_hash = up.email_hash
)
SELECT i.ord, coalesce(up.id, o.id) AS id,
       CASE WHEN up.created THEN 'created'
            WHEN up.id IS NOT NULL THEN 'updated'
            WHEN o.status = 'erased' THEN 'erased'
            ELSE 'unchanged' END AS outcome
FROM input i
LEFT JOIN up ON up.tenant_id = i.tenant_id AND up.email_hash = i.email_hash
LEFT JOIN old o ON o.tenant_id = i.tenant_id AND o.email_hash = i.email_hash
ORDER BY i.ord;

-- name: contact-ids-by-hash
-- The ids of contacts by (tenant, address hash); read in a statement of its own, so it sees rows committed
-- while upsert-contacts ran.
SELECT c.id, c.tenant_id, c.email_hash
FROM unnest($1::bigint[], $2::bytea[]) AS k(tenant_id, email_hash)
JOIN contacts c ON c.tenant_id = k.tenant_id AND c.email_hash = k.email_hash;

-- name: ensure-tags
-- Tags are created on first use; a concurrent creator of the same slug simply wins.
INSERT INTO tags (tenant_id, slug)
SELECT DISTINCT t.tenant_id, t.slug FROM unnest($1::bigint[], $2::text[]) AS t(tenant_id, slug)
ON CONFLICT (tenant_id, slug) DO NOTHING;

-- name: link-contact-tags
-- A separate statement from ensure-tags so it sees tags another transaction created meanwhile.
-- Returns the contacts that gained a tag (a re-sent batch gains none). The contacts come as one JSON array
-- of {contact_id, tenant_id, slugs} ($1, text), as in upsert-contacts. The pairs are materialised before the
-- join: joined inside the lateral expansion, the tenant's tags were read and hashed again for every contact.
WITH p AS MATERIALIZED (
    SELECT p.contact_id, p.tenant_id, s.slug
    FROM jsonb_to_recordset($1::text::jsonb) AS p(contact_id bigint, tenant_id bigint, slugs jsonb)
    CROSS JOIN LATERAL jsonb_array_elements_text(p.slugs) AS s(slug)
)
INSERT INTO contact_tags (contact_id, tag_id)
SELECT p.contact_id, t.id
FROM p
JOIN tags t ON t.tenant_id = p.tenant_id AND t.slug = p.slug
ON CONFLICT DO NOTHING
RETURNING contact_id;

-- name: unlink-contact-tags
DELETE FROM contact_tags ct USING tags t
WHERE ct.contact_id = $1 AND t.id = ct.tag_id AND t.tenant_id = $2 AND t.slug = ANY($3::text[])
RETURNING t.slug;

-- name: record-contact-events
-- Events for many contacts at once (one kind and detail per row).
INSERT INTO contact_events (contact_id, tenant_id, kind, detail)
SELECT e.contact_id, $1, e.kind, e.detail::jsonb
FROM unnest($2::bigint[], $3::text[], $4::text[]) AS e(contact_id, kind, detail);

-- name: list-contacts
-- returns: Contact
-- Keyset pagination on (tenant_id, id): each page starts after the last id seen, so deep pages cost what
-- the first one does. NULL parameters switch a filter off; erased contacts show only when asked for.
-- Search is a case-insensitive substring (pg_trgm is not in the embedded PostgreSQL, so no trigram index).
SELECT c.id, c.tenant_id, c.data_source_id, c.email, c.first_name, c.last_name, c.company, c.website,
       c.country, c.language, c.category, c.custom, c.status::text AS status, c.score, c.reasons, c.suggestion,
       c.mx_host, c.validated_at, c.created_at, c.updated_at,
       ARRAY(SELECT t.slug FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id
             WHERE ct.contact_id = c.id ORDER BY t.slug) AS tags
FROM contacts c
WHERE c.tenant_id = $1 AND c.id > $2
  AND (($3::contact_status IS NULL AND c.status <> 'erased') OR c.status = $3::contact_status)
  AND ($4::text[] IS NULL OR (
        SELECT count(*) FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id
        WHERE ct.contact_id = c.id AND t.slug = ANY($4::text[])
      ) >= CASE WHEN $5::boolean THEN cardinality($4::text[]) ELSE 1 END)
  AND ($6::text IS NULL OR c.language = $6::text)
  AND ($7::text IS NULL OR c.category = $7::text)
  AND ($8::bigint IS NULL OR c.data_source_id = $8::bigint)
  AND ($9::timestamptz IS NULL OR c.created_at >= $9::timestamptz)
  AND ($10::timestamptz IS NULL OR c.created_at < $10::timestamptz)
  AND ($11::text IS NULL OR c.email ILIKE $11::text OR c.company ILIKE $11::text)
ORDER BY c.id
LIMIT $12;

-- name: count-contacts
-- The total behind list-contacts' filters (same WHERE clause, without the cursor).
SELECT count(*)
FROM contacts c
WHERE c.tenant_id = $1
  AND (($2::contact_status IS NULL AND c.status <> 'erased') OR c.status = $2::contact_status)
  AND ($3::text[] IS NULL OR (
        SELECT count(*) FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id
        WHERE ct.contact_id = c.id AND t.slug = ANY($3::text[])
      ) >= CASE WHEN $4::boolean THEN cardinality($3::text[]) ELSE 1 END)
  AND ($5::text IS NULL OR c.language = $5::text)
  AND ($6::text IS NULL OR c.category = $6::text)
  AND ($7::bigint IS NULL OR c.data_source_id = $7::bigint)
  AND ($8::timestamptz IS NULL OR c.created_at >= $8::timestamptz)
  AND ($9::timestamptz IS NULL OR c.created_at < $9::timestamptz)
  AND ($10::text IS NULL OR c.email ILIKE $10::text OR c.company ILIKE $10::text);

-- name: get-contact
-- returns: Contact
SELECT c.id, c.tenant_id, c.data_source_id, c.email, c.first_name, c.last_name, c.company, c.website,
       c.country, c.language, c.category, c.custom, c.status::text AS status, c.score, c.reasons, c.suggestion,
       c.mx_host, c.validated_at, c.created_at, c.updated_at,
       ARRAY(SELECT t.slug FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id
             WHERE ct.contact_id = c.id ORDER BY t.slug) AS tags
FROM contacts c
WHERE c.tenant_id = $1 AND c.id = $2;

-- name: lock-contact
-- The row a PATCH changes, locked so two operators' edits apply one after the other.
SELECT status::text AS status, data_source_id, first_name, last_name, company, website, country, language,
       category, custom
FROM contacts WHERE tenant_id = $1 AND id = $2
FOR UPDATE;

-- name: update-contact
UPDATE contacts SET data_source_id = $3, first_name = $4, last_name = $5, company = $6, website = $7,
       country = $8, language = $9, category = $10, custom = $11, status = $12::contact_status,
       -- set back to pending by hand: validation starts over, with no DNS outage counted against it
       validation_tries = CASE WHEN $12::contact_status = 'pending' AND status <> 'pending' THEN 0
                               ELSE validation_tries END,
       updated_at = now()
WHERE tenant_id = $1 AND id = $2;

-- name: erase-contact
-- Erasure (GDPR art. 17): every personal field goes, the address hash stays so the address is refused if
-- anyone imports it again. Tags and a pending MailWizz push go too, and so does the text of every rejected
-- import line of the tenant's that names the address; events hold no personal data.
WITH target AS (
    SELECT id, lower(email) AS email FROM contacts
    WHERE tenant_id = $1 AND id = $2 AND status <> 'erased'
    FOR UPDATE
),
erased AS (
    UPDATE contacts c SET email = NULL, first_name = NULL, last_name = NULL, company = NULL, website = NULL,
           country = NULL, language = NULL, category = NULL, custom = '{}'::jsonb, status = 'erased',
           score = NULL, reasons = '{}', suggestion = NULL, mx_host = NULL, mailwizz_subscriber_uid = NULL,
           updated_at = now()
    FROM target t WHERE c.id = t.id
    RETURNING c.id
),
untag AS (DELETE FROM contact_tags WHERE contact_id IN (SELECT id FROM erased)),
unqueue AS (DELETE FROM mailwizz_outbox WHERE contact_id IN (SELECT id FROM erased)),
unreject AS (
    UPDATE import_rejects r SET raw = NULL
    FROM imports i, target t
    WHERE i.tenant_id = $1 AND r.import_id = i.id AND strpos(lower(r.raw), t.email) > 0
)
SELECT id FROM erased;

-- name: list-contact-events
-- returns: ContactEvent
SELECT e.id, e.kind, e.detail, e.created_at
FROM contact_events e
WHERE e.tenant_id = $1 AND e.contact_id = $2
ORDER BY e.id;
