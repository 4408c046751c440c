-- name: campaign-status-for-sequence
-- The campaign's status inside the tenant (NULL: not the tenant's campaign).
SELECT status::text FROM campaigns WHERE tenant_id = $1 AND id = $2;

-- name: live-template-ids
SELECT id FROM email_templates WHERE tenant_id = $1 AND id = ANY($2::bigint[]) AND deleted_at IS NULL;

-- name: save-sequence
INSERT INTO campaign_sequences (campaign_id, tenant_id, steps, stop_on, recipient_window, winner)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (campaign_id) DO UPDATE
SET steps = EXCLUDED.steps, stop_on = EXCLUDED.stop_on, recipient_window = EXCLUDED.recipient_window,
    winner = EXCLUDED.winner, updated_at = now();

-- name: get-sequence
SELECT steps, stop_on, recipient_window, winner FROM campaign_sequences WHERE campaign_id = $1;

-- name: set-sequence-winner
-- The winning variant of a step, decided once: a second decision for the same step changes nothing.
UPDATE campaign_sequences
SET winner = jsonb_set(winner, '{steps}', coalesce(winner -> 'steps', '{}'::jsonb) || jsonb_build_object($2::text, $3::int))
WHERE campaign_id = $1 AND NOT coalesce(winner -> 'steps', '{}'::jsonb) ? $2::text
RETURNING campaign_id;

-- name: clear-holidays
DELETE FROM tenant_holidays WHERE tenant_id = $1;

-- name: add-holidays
INSERT INTO tenant_holidays (tenant_id, day, name)
SELECT $1, d, n FROM unnest($2::date[], $3::text[]) AS u(d, n)
ON CONFLICT (tenant_id, day) DO UPDATE SET name = EXCLUDED.name;

-- name: list-holidays
SELECT day, name FROM tenant_holidays WHERE tenant_id = $1 ORDER BY day;

-- name: step-rows
-- What a sequence's dispatch needs of claimed rows beyond claim-sends: the step, the variant already
-- assigned, the thread the row answers, and the opening message's template and variant (whose subject a
-- threaded follow-up keeps).
SELECT s.id, s.step, s.variant, s.in_reply_to, s.thread_refs, o.template_id AS opening_template_id,
       o.variant AS opening_variant
FROM sends s
LEFT JOIN sends o ON o.campaign_id = s.campaign_id AND o.contact_id = s.contact_id AND o.step = 1 AND s.step > 1
WHERE s.id = ANY($1::bigint[]);

-- name: tenant-sending-ip-count
SELECT count(*) FROM ips WHERE tenant_id = $1 AND status IN ('warming', 'active');

-- name: set-variants
-- The variant each row is sent with, written while the row is still this worker's (fenced like every write).
UPDATE sends s SET variant = u.variant
FROM unnest($1::bigint[], $2::int[], $3::smallint[]) AS u(id, gen, variant)
WHERE s.id = u.id AND s.claimed_by = $4 AND s.claim_gen = u.gen AND s.status = 'claimed';

-- name: rows-awaiting-next-step
-- Rows that left (injected or delivered) and whose next step is not written yet; the partial index
-- sends_next_unwritten keeps this small however long the campaign has run.
SELECT s.id, s.contact_id, s.step, s.language, s.message_id, s.thread_refs, c.country, c.custom
FROM sends s JOIN contacts c ON c.id = s.contact_id AND c.tenant_id = s.tenant_id
WHERE s.campaign_id = $1 AND NOT s.next_written AND s.status IN ('injected', 'delivered')
ORDER BY s.id
LIMIT $2;

-- name: write-next-steps
-- The next step's rows ($3..$9), due after their delay, and the flag on the rows they follow ($2), in one
-- statement. The unique (campaign, contact, step) makes a second writer harmless: nobody gets a step twice.
WITH follows AS (
    UPDATE sends SET next_written = true WHERE id = ANY($2::bigint[])
), ins AS (
    INSERT INTO sends (tenant_id, campaign_id, contact_id, language, step, status, next_attempt_at,
                       in_reply_to, thread_refs)
    SELECT c.tenant_id, $1, u.contact_id, u.language, u.step, 'deferred', u.due, u.in_reply_to, u.refs
    FROM unnest($3::bigint[], $4::smallint[], $5::timestamptz[], $6::text[], $7::text[], $8::text[])
         AS u(contact_id, step, due, in_reply_to, refs, language)
    JOIN campaigns c ON c.id = $1
    ON CONFLICT (campaign_id, contact_id, step) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM ins;

-- name: complete-sequence
-- complete-campaign, and no row still owes its follow-up (a worker may have sent it a moment ago).
UPDATE campaigns SET status = 'completed', finished_at = now(), updated_at = now()
WHERE id = $1 AND status = 'sending' AND audience_ready
  AND NOT EXISTS (SELECT 1 FROM sends WHERE campaign_id = $1 AND status IN ('queued', 'claimed', 'sending', 'deferred'))
  AND NOT EXISTS (SELECT 1 FROM sends WHERE campaign_id = $1 AND NOT next_written AND status IN ('injected', 'delivered'))
RETURNING id;

-- name: sequence-stops
-- Why each of these contacts ($2, with their address's domain $3) may not get its next step of campaign $1:
-- a human reply (or a colleague's, for the company rule), an auto-reply and its return date, an earlier step
-- that bounced, failed or drew a complaint.
WITH mine AS (
    SELECT * FROM unnest($2::bigint[], $3::text[]) AS m(contact_id, domain)
)
SELECT m.contact_id,
       coalesce(bool_or(r.kind = 'human' AND r.contact_id = m.contact_id), false) AS replied,
       coalesce(bool_or(r.kind = 'human' AND r.contact_id <> m.contact_id), false) AS colleague_replied,
       coalesce(bool_or(r.kind = 'auto_reply' AND r.contact_id = m.contact_id), false) AS auto_replied,
       max(r.return_date) FILTER (WHERE r.kind = 'auto_reply' AND r.contact_id = m.contact_id) AS return_date,
       EXISTS (SELECT 1 FROM sends p WHERE p.campaign_id = $1 AND p.contact_id = m.contact_id
               AND (p.status IN ('bounced', 'failed') OR p.complained_at IS NOT NULL)) AS bounced
FROM mine m
LEFT JOIN replies r ON r.campaign_id = $1
     AND (r.contact_id = m.contact_id OR split_part(r.from_email, '@', 2) = m.domain)
GROUP BY m.contact_id;

-- name: variant-stats
-- Per step and variant of a campaign: messages sent, delivered, bounced, and the contacts who replied
-- (a human reply) or unsubscribed since.
-- returns: VariantStats
SELECT s.step::int AS step, s.variant::int AS variant,
       count(*) FILTER (WHERE s.status IN ('sending', 'injected', 'delivered', 'bounced'))::bigint AS sent,
       count(*) FILTER (WHERE s.status = 'delivered')::bigint AS delivered,
       count(*) FILTER (WHERE s.status = 'bounced')::bigint AS bounced,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM replies r WHERE r.campaign_id = s.campaign_id
                                      AND r.contact_id = s.contact_id AND r.kind = 'human'))::bigint AS replied,
       count(*) FILTER (WHERE c.status = 'unsubscribed')::bigint AS unsubscribed
FROM sends s JOIN contacts c ON c.id = s.contact_id AND c.tenant_id = s.tenant_id
WHERE s.campaign_id = $1 AND s.variant IS NOT NULL
GROUP BY s.step, s.variant
ORDER BY s.step, s.variant;
