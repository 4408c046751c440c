-- The template library: a template's layout, step role (opening or follow-up), preheader and <title>; and the
-- sender identity every layout shows (a tenant's, which a campaign may override field by field).

CREATE TYPE email_layout AS ENUM ('personal', 'branded');
CREATE TYPE template_step AS ENUM ('opening', 'follow_up_1', 'follow_up_2');

-- Templates made before the library keep the table layout they were written for; new ones default to
-- `personal` in the code (engine/templates.py), the layout for cold outreach.
ALTER TABLE email_templates
    ADD COLUMN layout    email_layout NOT NULL DEFAULT 'branded',
    -- NULL: not part of a sequence (a one-off message)
    ADD COLUMN step      template_step,
    -- the preview line clients show after the subject; NULL: none
    ADD COLUMN preheader text CHECK (preheader IS NULL OR length(preheader) <= 500),
    -- the HTML <title>; NULL: the rendered subject
    ADD COLUMN title     text CHECK (title IS NULL OR length(title) <= 500);
-- Listing by category and step reads live templates in that order.
CREATE INDEX email_templates_library ON email_templates (tenant_id, category, step, language)
    WHERE deleted_at IS NULL;

-- What renders is versioned, so a send can always be rebuilt as it went out.
ALTER TABLE email_template_versions
    ADD COLUMN layout    email_layout NOT NULL DEFAULT 'branded',
    ADD COLUMN preheader text,
    ADD COLUMN title     text;

-- One row per tenant (campaign_id NULL) and at most one per campaign; a NULL field of a campaign's row
-- falls back to the tenant's.
CREATE TABLE sender_identities (
    tenant_id    bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    campaign_id  bigint REFERENCES campaigns (id) ON DELETE CASCADE,
    sender_name    text CHECK (length(sender_name) BETWEEN 1 AND 200),
    sender_company text CHECK (length(sender_company) BETWEEN 1 AND 200),
    -- the postal address the bulk-sender rules (and CAN-SPAM) require in every message's footer
    sender_address text CHECK (length(sender_address) BETWEEN 1 AND 500),
    -- absolute https:// URL (checked in engine/identity.py)
    sender_website text CHECK (length(sender_website) BETWEEN 1 AND 500),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX sender_identities_tenant ON sender_identities (tenant_id) WHERE campaign_id IS NULL;
CREATE UNIQUE INDEX sender_identities_campaign ON sender_identities (campaign_id) WHERE campaign_id IS NOT NULL;

-- The seed's "Cold - Avocat FR" starter read "Votre cabinet Cabinet Durand…" and had no closing. Where a
-- tenant still has it exactly as seeded, it gets the corrected copy as a new version (sends keep theirs).
WITH fixed AS (
    UPDATE email_templates
    SET body_html = '<p>Bonjour {firstName},</p><p>Des expatriés cherchent souvent un avocat qui '
                    'parle leur langue et connaît leur situation. {company} pourrait-il en accompagner certains ?'
                    '</p><p>Auriez-vous dix minutes cette semaine pour que je vous explique comment cela '
                    'fonctionne ?</p><p>Bien cordialement,<br>{{ sender_name }}<br>{{ sender_company }}</p>',
        variables = ARRAY['firstName', 'company', 'sender_name', 'sender_company'],
        version = version + 1, updated_at = now()
    WHERE name = 'Cold - Avocat FR' AND language = 'fr' AND deleted_at IS NULL
      AND body_html = '<p>Bonjour {firstName},</p><p>Votre cabinet {company} pourrait bénéficier...</p>'
    RETURNING id, version, language, subject, body_html, body_text, variables, layout, preheader, title
)
INSERT INTO email_template_versions (template_id, version, language, subject, body_html, body_text, variables,
                                     layout, preheader, title)
SELECT id, version, language, subject, body_html, body_text, variables, layout, preheader, title FROM fixed;
