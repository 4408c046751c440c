-- MailWizz transport: what the campaign job needs to create each language group's MailWizz campaign exactly
-- once and to resume after a crash at any step.

-- Each remote object is stored as soon as MailWizz hands out its uid, so a re-run creates only what is missing.
ALTER TABLE mailwizz_campaigns ADD COLUMN template_uid text;
ALTER TABLE mailwizz_campaigns ADD COLUMN list_uid text;
-- why a group failed or is in doubt (the operator reads it in MailWizz's terms)
ALTER TABLE mailwizz_campaigns ADD COLUMN error text;
ALTER TABLE mailwizz_campaigns ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
-- pending -> creating -> sending <-> paused -> sent; failed, in_doubt and cancelled are final.
-- 'creating' is committed just before the campaign POST: found again without a uid, it means a crash while
-- MailWizz may have created it, so the group is never created a second time (in_doubt).
ALTER TABLE mailwizz_campaigns ADD CONSTRAINT mailwizz_campaigns_status CHECK (
    status IN ('pending', 'creating', 'sending', 'paused', 'sent', 'failed', 'in_doubt', 'cancelled'));
CREATE INDEX mailwizz_campaigns_campaign ON mailwizz_campaigns (campaign_id, status);
