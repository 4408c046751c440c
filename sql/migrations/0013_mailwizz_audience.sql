-- MailWizz campaigns mail exactly their audience: each MailWizz campaign ("wave") gets a list of its own that
-- holds only the send rows handed to it, instead of a LANGUAGE segment on the tenant's whole list.

-- A campaign has several waves per language: one for the rows that passed the policy in a pass, a later one
-- for contacts validated since or for the next day of a daily cap. list_uid is now the wave's own list.
ALTER TABLE mailwizz_campaigns ADD COLUMN wave integer NOT NULL DEFAULT 1;
ALTER TABLE mailwizz_campaigns ADD COLUMN template_version integer;
ALTER TABLE mailwizz_campaigns DROP CONSTRAINT mailwizz_campaigns_campaign_id_language_key;
ALTER TABLE mailwizz_campaigns ADD CONSTRAINT mailwizz_campaigns_wave UNIQUE (campaign_id, language, wave);
-- Rows join the open wave of their language; a wave stops taking rows once its MailWizz campaign is claimed.
CREATE UNIQUE INDEX mailwizz_campaigns_open ON mailwizz_campaigns (campaign_id, language)
    WHERE status IN ('pending', 'creating');
-- The hourly unsubscribe pull walks each tenant's recent wave lists.
CREATE INDEX mailwizz_campaigns_tenant_lists ON mailwizz_campaigns (tenant_id, created_at) WHERE list_uid IS NOT NULL;

-- Which send rows a wave holds: written when a row passes the policy, before anything reaches MailWizz, so a
-- wave's list and campaign are built from this table alone and a crash at any step resumes from it.
CREATE TABLE mailwizz_wave_sends (
    send_id        bigint PRIMARY KEY REFERENCES sends (id) ON DELETE CASCADE,
    wave_id        bigint NOT NULL REFERENCES mailwizz_campaigns (id) ON DELETE CASCADE,
    campaign_id    bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    -- the tenant's local day the row was given to the wave: what the campaign's daily cap counts
    day            date NOT NULL,
    -- its subscriber in the wave's list, once pushed
    subscriber_uid text
);
CREATE INDEX mailwizz_wave_sends_wave ON mailwizz_wave_sends (wave_id);
CREATE INDEX mailwizz_wave_sends_day ON mailwizz_wave_sends (campaign_id, day);
