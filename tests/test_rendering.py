"""Template rendering: seed placeholders, strict variables, injection refusal, filters, layout, text part."""

from __future__ import annotations

import re
from datetime import date

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.dates import format_date
from engine.languages import LANGUAGES
from engine.layout import build_email, compile_email, email_frame, render_email
from engine.plaintext import html_to_text
from engine.rendering import (
    ENVIRONMENT,
    MAX_BODY_BYTES,
    MAX_SUBJECT_CHARS,
    MissingVariable,
    TemplateCache,
    TemplateRejected,
    check_template,
    compile_template,
    convert_placeholders,
    render_body,
    render_context,
    render_parts,
    template_variables,
    validate_template,
)
from engine.starters import starter_templates

SEED_SUBJECT = "Développez votre cabinet avec SOS Expat"
SEED_BODY = "<p>Bonjour {firstName},</p><p>Votre cabinet {company} pourrait bénéficier...</p>"
UNSUB = "https://unsubscribe.example/u/abc?t=1&s=2"
CONTACT = {"first_name": "Zoé", "last_name": "Martin", "company": "Martin & Associés",
           "email": "zoe@cabinet.example", "website": "https://cabinet.example"}
DAY = date(2026, 11, 24)

INJECTIONS = [
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ x.__class__ }}",
    "{{ x['__class__'] }}",
    "{{ x|attr('__class__') }}",
    "{{ lipsum.__globals__ }}",
    "{{ joiner }}",
    "{{ self }}",
    "{{ config }}",
    "{% import 'x.html' as x %}",
    "{% include 'x.html' %}",
    "{% extends 'x.html' %}",
    "{% from 'x.html' import y %}",
    "{{ name|safe }}",
    "{% autoescape false %}{{ name }}{% endautoescape %}",
    "{% block subject %}x{% endblock %}",
]


def ctx(**extra):
    return render_context(CONTACT, {"city": "Lyon"}, UNSUB, extra, today=DAY)


def test_seed_curl_example_renders_as_written():
    compiled = compile_template(SEED_SUBJECT, SEED_BODY, language="fr")
    subject, html, text = render_parts(compiled, ctx())
    assert subject == SEED_SUBJECT
    assert html == "<p>Bonjour Zoé,</p><p>Votre cabinet Martin &amp; Associés pourrait bénéficier...</p>"
    assert text == "Bonjour Zoé,\n\nVotre cabinet Martin & Associés pourrait bénéficier..."
    assert compiled.variables == {"firstName", "company"}


def test_render_body_is_the_body_without_layout():
    compiled = compile_email(SEED_SUBJECT, SEED_BODY, language="fr")
    body = render_body(compiled, ctx())
    assert body.startswith('<p style="margin:0 0 16px 0;">Bonjour Zoé,</p>') and "<html" not in body
    with pytest.raises(MissingVariable, match="company"):
        render_body(compiled, render_context({"first_name": "A"}, None, UNSUB))


def test_placeholder_conversion_leaves_jinja_and_css_alone():
    assert convert_placeholders("{a} {{ b }} {% if c %}{d}{% endif %} p{color:red}") == (
        "{{ a }} {{ b }} {% if c %}{{ d }}{% endif %} p{color:red}"
    )
    assert template_variables("{firstName} {{ last_name }}", "{% set x = 1 %}{{ x }}") == {
        "firstName", "last_name"}


def test_snake_and_camel_aliases_and_custom_fields():
    compiled = compile_template("{firstName} {{ last_name }}", "{lastName} {{ city }} {unsubscribeUrl}")
    subject, html, _ = render_parts(compiled, ctx())
    assert subject == "Zoé Martin"
    assert html == "Martin Lyon https://unsubscribe.example/u/abc?t=1&amp;s=2"


def test_custom_field_cannot_shadow_contact_field():
    context = render_context({"email": "real@x.example"}, {"email": "fake@x.example"}, UNSUB)
    assert context["email"] == "real@x.example"
    assert context["custom"]["email"] == "fake@x.example"


@pytest.mark.parametrize("source", ["{firstName}", "{{ website }}", "{{ custom.nope }}", "{% if phone %}x{% endif %}"])
def test_missing_variable_names_it(source):
    compiled = compile_template("s", source)
    with pytest.raises(MissingVariable) as err:
        render_parts(compiled, render_context({"first_name": None, "company": "A"}, {"x": 1}, UNSUB))
    assert err.value.name in {"firstName", "website", "nope", "phone"}
    assert err.value.name in source


def test_missing_variable_in_subject_is_never_empty():
    compiled = compile_template("Hello {firstName}", "<p>x</p>")
    with pytest.raises(MissingVariable, match="firstName"):
        render_parts(compiled, render_context({}, None, UNSUB))


def test_default_filter_covers_a_missing_variable():
    compiled = compile_template("{{ first_name|default('there')|title }}", "<p>x</p>")
    assert render_parts(compiled, render_context({}, None, UNSUB))[0] == "There"


@pytest.mark.parametrize("payload", INJECTIONS)
@pytest.mark.parametrize("field", ["subject", "body_html", "body_text"])
def test_injection_refused_at_check_time(payload, field):
    parts = {"subject": "s", "body_html": "<p>x</p>", "body_text": None, field: payload}
    problems = check_template(**parts)
    assert problems and all(p.field == field for p in problems)
    with pytest.raises(TemplateRejected):
        validate_template(**parts)


@pytest.mark.parametrize("payload", INJECTIONS[:9])
def test_injection_harmless_at_render_time_if_forced_through(payload):
    # Skip our checks and compile straight in the engine's sandbox, as a bypass would.
    template = ENVIRONMENT.from_string(payload)
    compiled = compile_template("s", "<p>x</p>")
    forced = type(compiled)(language="en", variables=frozenset(), template=template, has_text=True)
    forced_blocks = {"subject": template.root_render_func, "html": template.root_render_func,
                     "body": template.root_render_func, "text": template.root_render_func,
                     "text_footer": template.root_render_func}
    template.blocks = forced_blocks
    try:
        subject, html, _ = render_parts(forced, {"x": "a", "name": "n"})
    except TemplateRejected as exc:
        assert "unsafe" in exc.reason
        return
    except MissingVariable as exc:  # the unsafe globals are simply not there
        assert exc.name in {"lipsum", "joiner", "config", "cycler"}
        return
    for out in (subject, html):  # {{ self }}: a reference to the template's own blocks, nothing more
        assert "class" not in out and "function" not in out and "module" not in out and "<" not in out


def test_dunder_resolved_at_runtime_is_refused_by_sandbox():
    # The AST check cannot see a computed key; the sandbox must.
    compiled = compile_template("s", "{{ x[k] }}")
    with pytest.raises(TemplateRejected, match="unsafe"):
        render_parts(compiled, {"x": "a", "k": "__class__", "unsubscribe_url": UNSUB})
    assert isinstance(ENVIRONMENT, ImmutableSandboxedEnvironment)


def test_resource_bombs_refused():
    for source in ("{{ 'a' * 10000000 }}", "{{ 9 ** 999999 }}"):
        with pytest.raises(TemplateRejected):
            render_parts(compile_template("s", source), ctx())


def test_syntax_error_names_field_and_line():
    problems = check_template("ok", "<p>\n{{ first_name </p>")
    assert [p.field for p in problems] == ["body_html"]
    assert "line" in problems[0].reason


@pytest.mark.parametrize("subject", ["Hello\r\nBcc: x@evil.example", "a\nb", "a\rb"])
def test_line_break_in_subject_refused(subject):
    problems = check_template(subject, "<p>x</p>")
    assert problems and problems[0].field == "subject"


def test_line_break_from_a_value_cannot_split_the_subject():
    compiled = compile_template("Hi {{ company }}", "<p>x</p>")
    subject = render_parts(compiled, ctx(company="ACME\r\nBcc: x@evil.example"))[0]
    assert "\r" not in subject and "\n" not in subject
    assert subject == "Hi ACME Bcc: x@evil.example"


def test_size_caps():
    assert check_template("s" * (MAX_SUBJECT_CHARS + 1), "x")[0].field == "subject"
    assert check_template("s" * MAX_SUBJECT_CHARS, "x") == []
    big = "<p>" + "x" * MAX_BODY_BYTES + "</p>"
    assert [p.field for p in check_template("s", big)] == ["body_html"]
    assert [p.field for p in check_template("s", "x", big)] == ["body_text"]


def test_html_is_escaped_but_subject_and_text_are_not():
    compiled = compile_template("{{ company }}", "<p>{{ company }}</p>", "{{ company }}")
    subject, html, text = render_parts(compiled, ctx(company="<b>A&B</b>"))
    assert subject == "<b>A&B</b>"
    assert html == "<p>&lt;b&gt;A&amp;B&lt;/b&gt;</p>"
    assert text == "<b>A&B</b>"


@pytest.mark.parametrize(("lang", "expected"), [
    ("fr", "24 novembre 2026"), ("en", "24 November 2026"), ("es", "24 de noviembre de 2026"),
    ("de", "24. November 2026"), ("pt", "24 de novembro de 2026"), ("ru", "24 ноября 2026 г."),
    ("zh", "2026年11月24日"), ("hi", "24 नवंबर 2026"), ("ar", "24 نوفمبر 2026"),
])
def test_date_filter_per_language(lang, expected):
    compiled = compile_template("{{ today|date }}", "<p>{{ '2026-11-24'|date }}</p>", language=lang)
    subject, html, _ = render_parts(compiled, ctx())
    assert subject == expected
    assert html == f"<p>{expected}</p>"


def test_date_filter_extras():
    assert format_date(date(2026, 3, 1), "fr") == "1er mars 2026"
    assert format_date("2026-03-01T10:00:00", "xx") == "1 March 2026"
    compiled = compile_template("{{ today|date('de') }} {{ first_name|upper }} {{ company|lower }}", "x")
    assert render_parts(compiled, ctx())[0] == "24. November 2026 ZOÉ martin & associés"


def test_html_to_text_keeps_links_breaks_and_entities():
    html = ('<html><head><style>p{color:red}</style></head><body><div style="display:none">hidden</div>'
            '<p>Hello&nbsp;&amp; welcome,<br>second line</p><p>See <a href="https://a.example/x">our site</a>'
            ' or <a href="https://b.example/">https://b.example/</a> or <a href="mailto:a@b.example">'
            'a@b.example</a>.</p><ul><li>one</li><li>two</li></ul></body></html>')
    assert html_to_text(html) == (
        "Hello\xa0& welcome,\nsecond line\n\nSee our site (https://a.example/x) or https://b.example/ "
        "or a@b.example.\n\n- one\n- two"
    )


def test_compile_cache_compiles_each_version_once():
    cache = TemplateCache(maxsize=2)
    first = cache.get((7, 1), "s", "<p>{x}</p>")
    assert cache.get((7, 1), "changed but same version", "<p>y</p>") is first
    assert cache.compiles == 1
    cache.get((7, 2), "s", "<p>v2</p>")
    cache.get((8, 1), "s", "<p>other</p>")
    assert cache.compiles == 3
    cache.get((7, 1), "s", "<p>{x}</p>")  # evicted by the LRU bound
    assert cache.compiles == 4
    cache.invalidate(7)
    cache.get((7, 2), "s", "<p>v2</p>")
    assert cache.compiles == 5


@pytest.mark.parametrize("lang", sorted(LANGUAGES))
def test_layout_lang_dir_and_footer(lang):
    frame = email_frame(lang)
    assert frame is email_frame(lang)  # the shell is inlined once per language
    email = build_email("s", "<p>Hi {firstName}</p>", None, ctx(), language=lang, unsubscribe_url=UNSUB,
                        sender_address="1 rue de l'Exemple, 75001 Paris", brand="Example SAS")
    rtl = lang == "ar"
    assert f'<html lang="{lang}" dir="{"rtl" if rtl else "ltr"}">' in email.html
    assert ("text-align: right" in email.html) is rtl
    assert "<link" not in email.html and "<script" not in email.html
    # Every rule is inlined; the one <style> left holds the @media blocks (narrow screens, dark mode) alone.
    styles = re.findall(r"<style>(.*?)</style>", email.html, re.S)
    assert len(styles) == 1 and re.fullmatch(r"\s*(@media[^{]*\{(\s*[^{}]*\{[^{}]*\})*\s*\}\s*)+", styles[0])
    assert 'width="600"' in email.html and "max-width: 600px" in email.html
    assert 'href="https://unsubscribe.example/u/abc?t=1&amp;s=2"' in email.html
    assert "1 rue de l&#39;Exemple, 75001 Paris" in email.html and "Example SAS" in email.html
    assert email.text.endswith(f": {UNSUB}\n") and "Example SAS" in email.text


def test_arabic_layout_is_rtl_with_arabic_fonts():
    email = build_email("s", "<p>مرحبًا</p>", None, ctx(), language="ar", unsubscribe_url=UNSUB)
    assert '<html lang="ar" dir="rtl">' in email.html
    assert re.search(r'class="content"[^>]*dir="rtl"', email.html)
    assert "Noto Naskh Arabic" in email.html and "Tahoma" in email.html
    assert "إلغاء الاشتراك" in email.html


def test_font_stacks_cover_cjk_and_devanagari():
    zh = build_email("s", "<p>x</p>", None, ctx(), language="zh", unsubscribe_url=UNSUB).html
    hi = build_email("s", "<p>x</p>", None, ctx(), language="hi", unsubscribe_url=UNSUB).html
    assert all(f in zh for f in ("PingFang SC", "Microsoft YaHei", "Noto Sans SC"))
    assert all(f in hi for f in ("Noto Sans Devanagari", "Mangal"))


def test_unknown_language_falls_back_to_english_layout():
    email = build_email("s", "<p>x</p>", None, ctx(), language="it-IT", unsubscribe_url=UNSUB)
    assert '<html lang="en" dir="ltr">' in email.html and "Unsubscribe" in email.html


def test_preheader_hidden_in_html_and_absent_from_text():
    email = build_email("s", "<p>Body</p>", None, ctx(), language="en", unsubscribe_url=UNSUB,
                        preheader="Preview line")
    assert "Preview line" in email.html and "display: none" in email.html
    assert "Preview line" not in email.text and email.text.startswith("Body")


def test_text_part_keeps_links_and_given_text_wins():
    html = '<p>Hi {firstName},</p><p>Read <a href="{{ website }}/offer">the offer</a>.</p>'
    email = build_email("s", html, None, ctx(), language="en", unsubscribe_url=UNSUB)
    assert email.text.startswith("Hi Zoé,\n\nRead the offer (https://cabinet.example/offer).")
    email = build_email("s", html, "Plain {firstName}", ctx(), language="en", unsubscribe_url=UNSUB)
    assert email.text.startswith("Plain Zoé\n\n-- \n")


def test_text_falls_back_to_runtime_conversion_when_jinja_does_not_survive():
    # Entities that unescape to `{{` would be new Jinja syntax in a derived text template: not derived.
    compiled = compile_email("s", "<p>&#123;&#123; {{ company }}</p>", language="en")
    assert not compiled.has_text
    assert render_email(compiled, ctx()).text.startswith("{{ Martin & Associés\n\n-- ")


def test_jinja_tags_survive_text_derivation():
    compiled = compile_email("s", "<p>{% if 1<b %}{{ company }}{% endif %}</p>", language="en")
    assert compiled.has_text
    assert render_email(compiled, ctx(b=2)).text.startswith("Martin & Associés\n\n-- ")


def test_starters_cover_nine_languages_and_render():
    starters = starter_templates()
    general = {s.language: s for s in starters if s.category is None}
    assert set(general) == LANGUAGES
    seed = [s for s in starters if s.name == "Cold - Avocat FR"]
    assert len(seed) == 1 and seed[0].language == "fr" and seed[0].category == "avocat"
    # The seed's copy read "Votre cabinet Cabinet Durand…" and had no closing: the starter's copy is fixed.
    assert seed[0].subject == SEED_SUBJECT and "Votre cabinet {company}" not in seed[0].body_html
    assert seed[0].body_html.endswith("<p>Bien cordialement,<br>{{ sender_name }}<br>{{ sender_company }}</p>")
    for starter in starters:
        assert check_template(starter.subject, starter.body_html, starter.body_text) == []
        assert template_variables(starter.subject, starter.body_html) <= set(starter.variables)
        email = build_email(starter.subject, starter.body_html, starter.body_text,
                            render_context({"first_name": "Amal", "company": "Nour Conseil"}),
                            language=starter.language, unsubscribe_url=UNSUB,
                            sender={"sender_name": "Claire Martin", "sender_company": "SOS-Expat"})
        assert "Amal" in email.html and "Nour Conseil" in email.html
        assert "Amal" in email.text and "{" not in email.text and "{" not in email.subject
        assert "Claire Martin" in email.text  # every starter signs off with the sender's name
