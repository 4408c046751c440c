-- name: mwc-active-campaigns
-- MailWizz campaigns the poll must visit: those started (scheduled ones become sending when their time
-- comes), and paused or cancelled ones whose MailWizz side has not followed yet.
SELECT c.id FROM campaigns c
WHERE c.transport = 'mailwizz' AND (
      c.status IN ('scheduled', 'sending')
   OR (c.status = 'paused' AND EXISTS (SELECT 1 FROM mailwizz_campaigns g WHERE g.campaign_id = c.id AND g.status = 'sending'))
   OR (c.status = 'cancelled' AND EXISTS (SELECT 1 FROM mailwizz_campaigns g WHERE g.campaign_id = c.id
                                          AND g.status IN ('pending', 'sending', 'paused'))))
ORDER BY c.id;

-- name: mwc-unprepared-sends
-- Queued rows not yet given a language group and template, by keyset (the claimable index serves it).
-- returns: Unprepared
SELECT s.id, s.contact_id, c.email, coalesce(c.status::text, 'erased') AS contact_status, c.language,
       c.mailwizz_subscriber_uid
FROM sends s LEFT JOIN contacts c ON c.id = s.contact_id AND c.tenant_id = s.tenant_id
WHERE s.campaign_id = $1 AND s.status = 'queued' AND s.template_id IS NULL AND s.id > $2
ORDER BY s.id
LIMIT $3;

-- name: mwc-prepare-sends
-- A prepared row: its language group (one of the nine, as the LANGUAGE field says) and the group's template.
UPDATE sends s SET language = u.language, template_id = u.template_id, template_version = u.version
FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::int[]) AS u(id, language, template_id, version)
WHERE s.campaign_id = $1 AND s.id = u.id;

-- name: mwc-end-sends
-- Queued rows that end before MailWizz sees them. A MailWizz campaign's rows are only ever written by the
-- pass holding the campaign's lock, and only while still queued: the lock and the status are its fence.
UPDATE sends s SET status = u.status::send_status, detail = u.detail, finished_at = now()
FROM unnest($2::bigint[], $3::text[], $4::text[]) AS u(id, status, detail)
WHERE s.campaign_id = $1 AND s.id = u.id AND s.status = 'queued';

-- name: mwc-queued-languages
-- Language groups that still have prepared rows waiting for their MailWizz campaign.
SELECT language, count(*) AS n FROM sends
WHERE campaign_id = $1 AND status = 'queued' AND template_id IS NOT NULL
GROUP BY language ORDER BY language;

-- name: mwc-unprepared-left
SELECT EXISTS (SELECT 1 FROM sends WHERE campaign_id = $1 AND status = 'queued' AND template_id IS NULL);

-- name: mwc-insert-group
-- UNIQUE (campaign_id, language): however often this runs, one group row, hence one MailWizz campaign.
INSERT INTO mailwizz_campaigns (campaign_id, tenant_id, language, template_id, list_uid)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (campaign_id, language) DO NOTHING;

-- name: mwc-get-group
-- returns: Group
SELECT id, campaign_id, tenant_id, language, template_id, list_uid, template_uid, segment_uid, campaign_uid,
       status, stats, error
FROM mailwizz_campaigns
WHERE campaign_id = $1 AND language = $2;

-- name: mwc-list-groups
-- returns: Group
SELECT id, campaign_id, tenant_id, language, template_id, list_uid, template_uid, segment_uid, campaign_uid,
       status, stats, error
FROM mailwizz_campaigns
WHERE campaign_id = $1
ORDER BY language;

-- name: mwc-set-template-uid
UPDATE mailwizz_campaigns SET template_uid = $2, template_id = $3, updated_at = now() WHERE id = $1;

-- name: mwc-set-segment-uid
UPDATE mailwizz_campaigns SET segment_uid = $2, updated_at = now() WHERE id = $1;

-- name: mwc-claim-group
-- Committed before the campaign POST; only one caller moves a pending group on.
UPDATE mailwizz_campaigns SET status = 'creating', updated_at = now()
WHERE id = $1 AND status = 'pending'
RETURNING id;

-- name: mwc-group-created
UPDATE mailwizz_campaigns SET campaign_uid = $2, status = 'sending', error = NULL, updated_at = now()
WHERE id = $1;

-- name: mwc-set-group-status
-- A move only from the statuses in $3, so a poll never undoes what a newer one wrote.
UPDATE mailwizz_campaigns SET status = $2, error = coalesce($4, error), updated_at = now()
WHERE id = $1 AND status = ANY($3::text[])
RETURNING id;

-- name: mwc-set-group-stats
UPDATE mailwizz_campaigns SET stats = $2, updated_at = now() WHERE id = $1;

-- name: mwc-inject-group-sends
-- MailWizz accepted the group's campaign: its rows are handed over (MailWizz reports per campaign, not per row).
UPDATE sends SET status = 'injected', vmta = 'mailwizz', template_id = coalesce($3, template_id),
       template_version = coalesce($4, template_version),
       detail = 'MailWizz campaign ' || $5::text, injected_at = now(), finished_at = now()
WHERE campaign_id = $1 AND language = $2 AND status = 'queued' AND template_id IS NOT NULL;

-- name: mwc-fail-group-sends
UPDATE sends SET status = 'failed', detail = $3, finished_at = now()
WHERE campaign_id = $1 AND language = $2 AND status = 'queued';
