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

-- name: mwc-due-sends
-- Queued rows in no wave yet that the policy must look at, by keyset (the claimable index serves it): new
-- rows, rows whose validation recheck is due, and rows held for a contact that is no longer pending (a
-- validated contact stops waiting at the next pass).
-- returns: Due
SELECT s.id, s.contact_id, s.waiting_since, c.email, coalesce(c.status::text, 'erased') AS contact_status,
       c.language
FROM sends s LEFT JOIN contacts c ON c.id = s.contact_id AND c.tenant_id = s.tenant_id
WHERE s.campaign_id = $1 AND s.status = 'queued' AND s.id > $2
  AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= now() OR c.status IS DISTINCT FROM 'pending')
  AND NOT EXISTS (SELECT 1 FROM mailwizz_wave_sends w WHERE w.send_id = s.id)
ORDER BY s.id
LIMIT $3;

-- name: mwc-end-sends
-- Queued rows that end before MailWizz sees them. A MailWizz campaign's rows are only ever written by the
-- pass holding the campaign's lock, and only while still queued: the lock and the status are its fence.
UPDATE sends s SET status = u.status::send_status, detail = u.detail, next_attempt_at = NULL, finished_at = now()
FROM unnest($2::bigint[], $3::text[], $4::text[]) AS u(id, status, detail)
WHERE s.campaign_id = $1 AND s.id = u.id AND s.status = 'queued';

-- name: mwc-hold-sends
-- Rows whose contact is still being validated stay queued, looked at again after $4 seconds (or as soon as
-- the contact is no longer pending); the wait counts from the first hold (the tenant's validation wait).
UPDATE sends s SET detail = $3, next_attempt_at = now() + make_interval(secs => $4),
       waiting_since = coalesce(s.waiting_since, now())
WHERE s.campaign_id = $1 AND s.id = ANY($2::bigint[]) AND s.status = 'queued';

-- name: mwc-handed-on-day
-- Rows given to the campaign's waves on one tenant-local day: what its daily cap has used. A row refused
-- before anything was mailed (skipped) gives its place back.
SELECT count(*) FROM mailwizz_wave_sends w JOIN sends s ON s.id = w.send_id
WHERE w.campaign_id = $1 AND w.day = $2 AND s.status <> 'skipped';

-- name: mwc-open-wave
-- The language's open wave (pending: its MailWizz campaign not claimed yet), opened when there is none with
-- the next number. The template uploaded for the previous wave is kept when it is still the same version.
WITH found AS (
    SELECT id FROM mailwizz_campaigns WHERE campaign_id = $1 AND language = $3 AND status = 'pending'
), opened AS (
    INSERT INTO mailwizz_campaigns (campaign_id, tenant_id, language, wave, template_id, template_version,
                                    template_uid)
    SELECT $1, $2, $3, coalesce(last.wave, 0) + 1, $4, $5,
           CASE WHEN last.template_id = $4 AND last.template_version = $5 THEN last.template_uid END
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (SELECT wave, template_id, template_version, template_uid FROM mailwizz_campaigns
                       WHERE campaign_id = $1 AND language = $3 ORDER BY wave DESC LIMIT 1) AS last ON true
    WHERE NOT EXISTS (SELECT 1 FROM found)
    RETURNING id
)
SELECT id FROM found UNION ALL SELECT id FROM opened;

-- name: mwc-join-wave
-- Rows that passed the policy join their language's open wave (still queued: the fence), on the day $2
-- the daily cap counts them.
WITH joined AS (
    INSERT INTO mailwizz_wave_sends (send_id, wave_id, campaign_id, day)
    SELECT s.id, u.wave_id, $1, $2
    FROM unnest($3::bigint[], $4::bigint[]) AS u(id, wave_id) JOIN sends s ON s.id = u.id
    WHERE s.campaign_id = $1 AND s.status = 'queued'
    RETURNING send_id
)
UPDATE sends s SET language = u.language, template_id = u.template_id, next_attempt_at = NULL
FROM unnest($3::bigint[], $5::text[], $6::bigint[]) AS u(id, language, template_id)
WHERE s.id = u.id AND s.id IN (SELECT send_id FROM joined);

-- name: mwc-wave-members
-- A wave's rows still queued, with what the policy reads, by keyset: checked again just before MailWizz
-- gets them, then pushed to the wave's list.
-- returns: Member
SELECT s.id, s.contact_id, s.waiting_since, c.email, coalesce(c.status::text, 'erased') AS contact_status,
       w.subscriber_uid
FROM mailwizz_wave_sends w JOIN sends s ON s.id = w.send_id
     LEFT JOIN contacts c ON c.id = s.contact_id AND c.tenant_id = s.tenant_id
WHERE w.wave_id = $1 AND s.status = 'queued' AND s.id > $2
ORDER BY s.id
LIMIT $3;

-- name: mwc-leave-wave
-- Rows taken out of a wave before its campaign exists (their contact is pending again): queued, in no wave.
DELETE FROM mailwizz_wave_sends WHERE wave_id = $1 AND send_id = ANY($2::bigint[]);

-- name: mwc-set-wave-subscribers
-- The subscriber each row became in the wave's list.
UPDATE mailwizz_wave_sends w SET subscriber_uid = u.uid
FROM unnest($2::bigint[], $3::text[]) AS u(id, uid)
WHERE w.wave_id = $1 AND w.send_id = u.id;

-- name: mwc-wave-left
SELECT count(*) FROM mailwizz_wave_sends w JOIN sends s ON s.id = w.send_id
WHERE w.wave_id = $1 AND s.status = 'queued';

-- name: mwc-unassigned-left
-- Queued rows in no wave: ones still to be looked at, held for validation, or kept for a later day's cap.
SELECT EXISTS (SELECT 1 FROM sends s WHERE s.campaign_id = $1 AND s.status = 'queued'
               AND NOT EXISTS (SELECT 1 FROM mailwizz_wave_sends w WHERE w.send_id = s.id));

-- name: mwc-get-wave
-- returns: Wave
SELECT id, campaign_id, tenant_id, language, wave, template_id, template_version, list_uid, template_uid,
       campaign_uid, status, stats, error
FROM mailwizz_campaigns
WHERE id = $1;

-- name: mwc-list-waves
-- returns: Wave
SELECT id, campaign_id, tenant_id, language, wave, template_id, template_version, list_uid, template_uid,
       campaign_uid, status, stats, error
FROM mailwizz_campaigns
WHERE campaign_id = $1 AND status = ANY($2::text[])
ORDER BY language, wave;

-- name: mwc-drop-empty-wave
-- An open wave no row ever joined (a pass died between opening it and filling it).
DELETE FROM mailwizz_campaigns g
WHERE g.id = $1 AND g.status = 'pending' AND g.list_uid IS NULL
  AND NOT EXISTS (SELECT 1 FROM mailwizz_wave_sends w WHERE w.wave_id = g.id);

-- name: mwc-set-wave-list
-- Stored as soon as MailWizz hands out the uid, so a re-run fills the same list.
UPDATE mailwizz_campaigns SET list_uid = $2, updated_at = now() WHERE id = $1;

-- name: mwc-set-template-uid
UPDATE mailwizz_campaigns SET template_uid = $2, template_id = $3, template_version = $4, updated_at = now()
WHERE id = $1;

-- name: mwc-claim-wave
-- Committed before the campaign POST; only one caller moves a pending wave on, and the wave takes no more rows.
UPDATE mailwizz_campaigns SET status = 'creating', updated_at = now()
WHERE id = $1 AND status = 'pending'
RETURNING id;

-- name: mwc-wave-created
UPDATE mailwizz_campaigns SET campaign_uid = $2, status = 'sending', error = NULL, updated_at = now()
WHERE id = $1;

-- name: mwc-set-wave-status
-- A move only from the statuses in $3, so a poll never undoes what a newer one wrote.
UPDATE mailwizz_campaigns SET status = $2, error = coalesce($4, error), updated_at = now()
WHERE id = $1 AND status = ANY($3::text[])
RETURNING id;

-- name: mwc-set-wave-stats
UPDATE mailwizz_campaigns SET stats = $2, updated_at = now() WHERE id = $1;

-- name: mwc-inject-wave-sends
-- MailWizz accepted the wave's campaign: the rows in its list are handed over (MailWizz reports per
-- campaign, not per row). Still queued only: the fence.
UPDATE sends s SET status = 'injected', vmta = 'mailwizz', template_id = $2, template_version = $3,
       detail = 'MailWizz campaign ' || $4::text, next_attempt_at = NULL, injected_at = now(), finished_at = now()
FROM mailwizz_wave_sends w
WHERE w.wave_id = $1 AND w.send_id = s.id AND s.status = 'queued' AND w.subscriber_uid IS NOT NULL;

-- name: mwc-fail-wave-sends
-- The wave's rows still queued fail with the reason: its campaign will never be created (or they never made
-- it into its list).
UPDATE sends s SET status = 'failed', detail = $2, next_attempt_at = NULL, finished_at = now()
FROM mailwizz_wave_sends w
WHERE w.wave_id = $1 AND w.send_id = s.id AND s.status = 'queued';

-- name: mwc-wave-lists
-- The tenant's wave lists created in the last $2 days, for the hourly unsubscribe pull.
SELECT DISTINCT list_uid FROM mailwizz_campaigns
WHERE tenant_id = $1 AND list_uid IS NOT NULL AND created_at > now() - make_interval(days => $2)
ORDER BY list_uid;
