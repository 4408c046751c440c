-- name: templates-create
-- The head row and its version 1 in one statement, so a template never exists without its first version.
-- returns: Template
WITH t AS (
    INSERT INTO email_templates (tenant_id, name, language, category, subject, body_html, body_text, variables, active,
                                 layout, step, preheader, title)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::email_layout, $11::template_step, $12, $13)
    RETURNING id, tenant_id, name, language, category, subject, body_html, body_text, variables, active, version,
              layout, step, preheader, title, created_at, updated_at
), v AS (
    INSERT INTO email_template_versions (template_id, version, language, subject, body_html, body_text, variables,
                                         layout, preheader, title)
    SELECT id, version, language, subject, body_html, body_text, variables, layout, preheader, title FROM t
)
SELECT id, tenant_id, name, language, category, subject, body_html, body_text, variables, active, version,
       layout, step, preheader, title, created_at, updated_at
FROM t;

-- name: templates-list
-- Keyset page in id order; each filter is skipped when its parameter is NULL. Deleted templates never show.
-- returns: Template
SELECT id, tenant_id, name, language, category, subject, body_html, body_text, variables, active, version,
       layout, step, preheader, title, created_at, updated_at
FROM email_templates
WHERE tenant_id = $1 AND deleted_at IS NULL
  AND ($2::text IS NULL OR language = $2)
  AND ($3::text IS NULL OR category = $3)
  AND ($4::boolean IS NULL OR active = $4)
  AND ($7::template_step IS NULL OR step = $7::template_step)
  AND id > $5
ORDER BY id
LIMIT $6;

-- name: templates-library
-- The tenant's live templates by category, step role and language (what the library index lists); general
-- templates (no category) and one-off messages (no step) sort last in their group. Served by
-- email_templates_library.
-- returns: LibraryEntry
SELECT id, name, language, category, step, layout, active
FROM email_templates
WHERE tenant_id = $1 AND deleted_at IS NULL
  AND ($2::text IS NULL OR category = $2)
ORDER BY category NULLS LAST, step NULLS LAST, language, id;

-- name: templates-get
-- returns: Template
SELECT id, tenant_id, name, language, category, subject, body_html, body_text, variables, active, version,
       layout, step, preheader, title, created_at, updated_at
FROM email_templates
WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL;

-- name: templates-lock
-- An update reads the head under a row lock so two concurrent edits get consecutive versions.
-- returns: Template
SELECT id, tenant_id, name, language, category, subject, body_html, body_text, variables, active, version,
       layout, step, preheader, title, created_at, updated_at
FROM email_templates
WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL
FOR UPDATE;

-- name: templates-update
-- Writes the new head; when $10 is a new version number it is also kept in the versions table (an unchanged
-- version conflicts with its existing row and adds nothing).
-- returns: Template
WITH t AS (
    UPDATE email_templates
    SET name = $3, language = $4, category = $5, subject = $6, body_html = $7, body_text = $8, variables = $9,
        version = $10, active = $11, layout = $12::email_layout, step = $13::template_step, preheader = $14,
        title = $15, updated_at = now()
    WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL
    RETURNING id, tenant_id, name, language, category, subject, body_html, body_text, variables, active, version,
              layout, step, preheader, title, created_at, updated_at
), v AS (
    INSERT INTO email_template_versions (template_id, version, language, subject, body_html, body_text, variables,
                                         layout, preheader, title)
    SELECT id, version, language, subject, body_html, body_text, variables, layout, preheader, title FROM t
    ON CONFLICT (template_id, version) DO NOTHING
)
SELECT id, tenant_id, name, language, category, subject, body_html, body_text, variables, active, version,
       layout, step, preheader, title, created_at, updated_at
FROM t;

-- name: templates-delete
-- Soft delete: sends keep referring to (template_id, version), so the row and its versions stay readable.
UPDATE email_templates SET active = false, deleted_at = now(), updated_at = now()
WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL
RETURNING id;

-- name: templates-select
-- The seed's chain in one scan of the selection index: language+category, language general, en+category,
-- en general. When $2 is 'en' the first and third rungs coincide and report as the first. On one rung a
-- one-off template (no step role) beats a sequence's opening message, and the newest wins; follow-ups are
-- never chosen by the chain (a sequence step names them). engine.templates.TemplateBook is the same rule.
-- returns: SelectedTemplate
SELECT id, tenant_id, name, language, category, subject, body_html, body_text, variables, active, version,
       layout, step, preheader, title, created_at, updated_at,
       CASE WHEN language = $2 AND category = $3 THEN 'language+category'
            WHEN language = $2 AND category IS NULL THEN 'language'
            WHEN category = $3 THEN 'en+category'
            ELSE 'en' END AS matched
FROM email_templates
WHERE tenant_id = $1 AND active AND deleted_at IS NULL
  AND language IN ($2, 'en')
  AND (category IS NULL OR category = $3)
  AND (step IS NULL OR step = 'opening')
ORDER BY CASE WHEN language = $2 AND category = $3 THEN 1
              WHEN language = $2 AND category IS NULL THEN 2
              WHEN category = $3 THEN 3
              ELSE 4 END,
         step IS NOT NULL,
         id DESC
LIMIT 1;

-- name: templates-book
-- Every live template of a tenant: the dispatcher chooses among them in memory, with no query per message.
-- returns: Template
SELECT id, tenant_id, name, language, category, subject, body_html, body_text, variables, active, version,
       layout, step, preheader, title, created_at, updated_at
FROM email_templates
WHERE tenant_id = $1 AND active AND deleted_at IS NULL
ORDER BY id;

-- name: templates-get-version
-- Deleted templates included: a send's (template_id, version) must stay readable for as long as the send.
-- returns: TemplateVersion
SELECT v.template_id, v.version, v.language, v.subject, v.body_html, v.body_text, v.variables, v.layout,
       v.preheader, v.title, v.created_at
FROM email_template_versions v
JOIN email_templates t ON t.id = v.template_id
WHERE t.tenant_id = $1 AND v.template_id = $2 AND v.version = $3;

-- name: templates-list-versions
-- Newest first; the first row is the current version.
-- returns: TemplateVersion
SELECT v.template_id, v.version, v.language, v.subject, v.body_html, v.body_text, v.variables, v.layout,
       v.preheader, v.title, v.created_at
FROM email_template_versions v
JOIN email_templates t ON t.id = v.template_id
WHERE t.tenant_id = $1 AND v.template_id = $2 AND t.deleted_at IS NULL
ORDER BY v.version DESC;

-- name: templates-seed-starters
-- Insert-if-absent by (tenant, name, language), deleted rows included: a starter the tenant deleted stays
-- deleted, and one the tenant edited keeps the edits, when the seed runs again. $2 is every starter as a
-- JSON array (one statement however big the library). Returns how many were added.
WITH s AS (
    SELECT * FROM jsonb_to_recordset($2::jsonb) AS s(name text, language text, category text, subject text,
                                                       body_html text, body_text text, variables text[],
                                                       layout email_layout, step template_step, preheader text)
), t AS (
    INSERT INTO email_templates (tenant_id, name, language, category, subject, body_html, body_text, variables,
                                 layout, step, preheader)
    SELECT $1, s.name, s.language, s.category, s.subject, s.body_html, s.body_text, s.variables, s.layout,
           s.step, s.preheader
    FROM s
    WHERE NOT EXISTS (SELECT 1 FROM email_templates e
                      WHERE e.tenant_id = $1 AND e.name = s.name AND e.language = s.language)
    RETURNING id, version, language, subject, body_html, body_text, variables, layout, preheader, title
), v AS (
    INSERT INTO email_template_versions (template_id, version, language, subject, body_html, body_text, variables,
                                         layout, preheader, title)
    SELECT id, version, language, subject, body_html, body_text, variables, layout, preheader, title FROM t
)
SELECT count(*) FROM t;

-- name: templates-contact
-- The fields a template may use, for a preview or a test render against one of the tenant's contacts.
SELECT email, first_name, last_name, company, website, country, language, category, custom
FROM contacts
WHERE tenant_id = $1 AND id = $2;
