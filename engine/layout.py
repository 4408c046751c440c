"""The two email layouts (`personal` and `branded`) per language, CSS inlined once, and `build_email`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from enum import StrEnum
from functools import lru_cache
from typing import Any

import css_inline
import msgspec

from engine.languages import direction, template_language
from engine.plaintext import html_to_text
from engine.rendering import (
    DEFAULT_CACHE,
    SUBJECT,
    CompiledTemplate,
    Frame,
    TemplateCache,
    compile_template,
    render_parts,
)

__all__ = ["Layout", "RenderedEmail", "build_email", "compile_email", "email_frame", "html_to_text", "render_email"]

# "Unsubscribe" as a mail client user expects to read it in each language (Gmail/Outlook UI wording).
UNSUBSCRIBE_LABELS: dict[str, str] = {
    "fr": "Se désinscrire", "en": "Unsubscribe", "es": "Darse de baja", "de": "Abmelden",
    "pt": "Cancelar inscrição", "ru": "Отписаться", "zh": "退订", "hi": "सदस्यता छोड़ें",
    "ar": "إلغاء الاشتراك",
}

# Font stacks: system fonts first, then the script's usual Windows/Android/Noto faces, so no glyph falls
# back to a box. Single quotes because the stack ends up inside a double-quoted style attribute.
_LATIN = "-apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
FONT_STACKS: dict[str, str] = {
    "zh": "-apple-system, 'PingFang SC', 'Hiragino Sans GB', 'Microsoft YaHei', 'Noto Sans SC', "
          "'Noto Sans CJK SC', Helvetica, Arial, sans-serif",
    "hi": "'Noto Sans Devanagari', 'Nirmala UI', Mangal, -apple-system, 'Segoe UI', Arial, sans-serif",
    "ar": "'Noto Naskh Arabic', 'Segoe UI', Tahoma, 'Geeza Pro', Arial, sans-serif",
}

# Outlook ignores paragraph margins set on a parent, so bare <p> in a body gets its own inline style.
PARAGRAPH = '<p style="margin:0 0 16px 0;">'


class Layout(StrEnum):
    """`personal` looks typed in a mail client (cold outreach); `branded` is the responsive table shell."""

    PERSONAL = "personal"
    BRANDED = "branded"


# The branded shell. Dark mode: clients that invert colours (Gmail apps, Outlook.com) get colours chosen to
# survive inversion; clients that honour prefers-color-scheme (Apple Mail, Outlook for Mac) get the @media
# block. Responsive: the container is fluid up to 600 px (max-width), with an MSO ghost table for Outlook on
# Windows, which ignores max-width; the @media block only tightens padding on narrow screens.
_STYLE = """
body { margin:0; padding:0; background-color:#f4f5f7; -webkit-text-size-adjust:100%; }
.wrapper { width:100%; background-color:#f4f5f7; }
.outer { padding:24px 12px; }
.container { width:100%; max-width:600px; background-color:#ffffff; border-radius:6px; }
.brand { padding:24px 32px 0 32px; font-family:FONT; font-size:18px; line-height:1.4; font-weight:bold;
         color:#1f2933; text-align:ALIGN; direction:DIR; }
.content { padding:24px 32px 16px 32px; font-family:FONT; font-size:16px; line-height:1.6; color:#1f2933;
           text-align:ALIGN; direction:DIR; word-wrap:break-word; }
.footer { padding:16px 32px 8px 32px; font-family:FONT; font-size:12px; line-height:1.5; color:#6b7280;
          text-align:ALIGN; direction:DIR; }
.footer-link { color:#6b7280; text-decoration:underline; }
.preheader { display:none; max-height:0; max-width:0; overflow:hidden; mso-hide:all; font-size:1px;
             line-height:1px; opacity:0; }
@media only screen and (max-width:620px) {
  .outer { padding:8px 0 !important; }
  .brand { padding:16px 16px 0 16px !important; }
  .content { padding:16px 16px 8px 16px !important; }
  .footer { padding:12px 16px 8px 16px !important; }
}
@media (prefers-color-scheme: dark) {
  .wrapper, .outer { background-color:#111827 !important; }
  .container { background-color:#1f2933 !important; }
  .brand, .content { color:#f3f4f6 !important; }
  .footer, .footer-link { color:#9ca3af !important; }
}
"""

# The preheader has no colour of its own: text coloured like its background is a spam signal
# (SpamAssassin HTML_FONT_LOW_CONTRAST); display:none and opacity hide it.

# Layout variables a render may leave out; given as template globals so no Undefined is built per message.
# `sender_name` is not one: the layouts do not show it, and a signature that uses it must not go out empty
# (a tenant without a sender identity gets "missing variable 'sender_name'", or the template's |default).
LAYOUT_DEFAULTS: tuple[tuple[str, str], ...] = (
    ("preheader", ""), ("title", ""), ("brand", ""), ("sender_company", ""), ("sender_address", ""),
    ("sender_website", ""),
)

_HEAD = """<!DOCTYPE html>
<html lang="LANG" dir="DIR">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="X-UA-Compatible" content="IE=edge">
<meta name="x-apple-disable-message-reformatting">
<meta name="color-scheme" content="light dark">
<meta name="supported-color-schemes" content="light dark">
<title>@@TITLE@@</title>
"""

# Identity lines carry dir="auto": a Latin postal address in an Arabic footer keeps its own order
# ("12 rue…", not "rue… 12"), while the line stays aligned with the rest.
# Markers survive css_inline as text/comments and become Jinja afterwards; the body is inserted between.
_BRANDED = _HEAD + """<style>STYLE</style>
</head>
<body>
<div class="preheader">@@PREHEADER@@</div>
<table role="presentation" class="wrapper" width="100%" cellpadding="0" cellspacing="0" border="0">
<tr><td class="outer" align="center">
<!--[if mso]><table role="presentation" width="600" align="center" cellpadding="0" cellspacing="0" border="0"><tr><td><![endif]-->
<table role="presentation" class="container" width="100%" align="center" cellpadding="0" cellspacing="0" border="0">
<!--@@IF_BRAND@@--><tr><td class="brand" dir="DIR" align="ALIGN">@@BRAND@@</td></tr><!--@@END@@-->
<tr><td class="content" dir="DIR" align="ALIGN">@@BODY@@</td></tr>
<tr><td class="footer" dir="DIR" align="ALIGN">
<!--@@IF_BRAND@@--><p dir="auto" style="margin:0 0 4px 0;">@@BRAND@@</p><!--@@END@@-->
<!--@@IF_ADDRESS@@--><p dir="auto" style="margin:0 0 4px 0;">@@ADDRESS@@</p><!--@@END@@-->
<!--@@IF_WEBSITE@@--><p dir="auto" style="margin:0 0 4px 0;"><a class="footer-link" href="@@WEBSITE@@">@@WEBSITE@@</a></p><!--@@END@@-->
<p style="margin:0;"><a class="footer-link" href="@@UNSUBSCRIBE_URL@@">LABEL</a></p>
</td></tr>
</table>
<!--[if mso]></td></tr></table><![endif]-->
</td></tr>
</table>
</body>
</html>
"""

# The personal shell: what a mail client sends when someone types a message. No colours of its own (the
# reader's client picks them, dark mode included), no images, no tables, the system font; the identity and
# the unsubscribe link sit in a small footer under the signature.
_PERSONAL = _HEAD + """</head>
<body style="margin:0; padding:0;">
<div style="display:none; max-height:0; overflow:hidden; mso-hide:all; font-size:1px; line-height:1px; opacity:0;">@@PREHEADER@@</div>
<div dir="DIR" style="font-family:FONT; font-size:15px; line-height:1.5; text-align:ALIGN; direction:DIR; padding:8px 12px; word-wrap:break-word;">
@@BODY@@
<p style="margin:24px 0 0 0; font-size:12px; line-height:1.5; color:#6b7280;"><!--@@IF_BRAND@@--><span dir="auto">@@BRAND@@</span><br><!--@@END@@--><!--@@IF_ADDRESS@@--><span dir="auto">@@ADDRESS@@</span><br><!--@@END@@--><!--@@IF_WEBSITE@@--><a href="@@WEBSITE@@" style="color:#6b7280;">@@WEBSITE@@</a><br><!--@@END@@--><a href="@@UNSUBSCRIBE_URL@@" style="color:#6b7280;">LABEL</a></p>
</div>
</body>
</html>
"""

_SHELLS = {Layout.PERSONAL: _PERSONAL, Layout.BRANDED: _BRANDED}

# `brand` is the older name of `sender_company`; either fills the brand slot.
_JINJA = {
    "@@TITLE@@": "{% if title %}{{ title }}{% else %}{{ " + SUBJECT + "|forceescape }}{% endif %}",
    "@@PREHEADER@@": "{{ preheader }}",
    "<!--@@IF_BRAND@@-->": "{% if sender_company or brand %}",
    "@@BRAND@@": "{{ sender_company or brand }}",
    "<!--@@IF_ADDRESS@@-->": "{% if sender_address %}",
    "@@ADDRESS@@": "{{ sender_address }}",
    "<!--@@IF_WEBSITE@@-->": "{% if sender_website %}",
    "@@WEBSITE@@": "{{ sender_website }}",
    "<!--@@END@@-->": "{% endif %}",
    "@@UNSUBSCRIBE_URL@@": "{{ unsubscribe_url }}",
}

# keep_at_rules: the @media blocks (narrow screens, dark mode) cannot be inlined and stay in a <style>.
_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False, keep_style_tags=False, keep_link_tags=False,
                                 keep_at_rules=True)


def layout_name(layout: str | None) -> Layout:
    """The layout by name; None is the branded shell every template had before layouts could be chosen."""
    return Layout(layout) if layout else Layout.BRANDED


class RenderedEmail(msgspec.Struct, frozen=True, kw_only=True):
    """One message ready for MIME: subject, HTML part (layout included) and text part."""

    subject: str
    html: str
    text: str


@lru_cache(maxsize=32)
def email_frame(language: str, layout: str | None = None) -> Frame:
    """The layout's shell for a language with its CSS inlined, as Jinja around the body; built once."""
    lang = template_language(language)
    shape = layout_name(layout)
    rtl = direction(lang) == "rtl"
    font, align, way = FONT_STACKS.get(lang, _LATIN), "right" if rtl else "left", "rtl" if rtl else "ltr"
    style = _STYLE.replace("FONT", font).replace("ALIGN", align).replace("DIR", way)
    shell = (
        _SHELLS[shape].replace("STYLE", style).replace("FONT", font).replace("LANG", lang).replace("DIR", way)
        .replace("ALIGN", align).replace("LABEL", UNSUBSCRIBE_LABELS[lang])
    )
    inlined = _INLINER.inline(shell) if shape is Layout.BRANDED else shell
    if "{{" in inlined or "{%" in inlined or "{#" in inlined:
        raise AssertionError("layout shell must not contain Jinja syntax before markers are replaced")
    for marker, jinja in _JINJA.items():
        inlined = inlined.replace(marker, jinja)
    prefix, suffix = inlined.split("@@BODY@@")
    footer = (
        "\n\n-- \n{% if sender_company or brand %}{{ sender_company or brand }}\n{% endif %}"
        "{% if sender_address %}{{ sender_address }}\n{% endif %}"
        + UNSUBSCRIBE_LABELS[lang] + ": {{ unsubscribe_url }}\n"
    )
    return Frame(html_prefix=prefix, html_suffix=suffix, text_footer=footer, defaults=LAYOUT_DEFAULTS)


def compile_email(subject_tpl: str, html_tpl: str, text_tpl: str | None = None, *, language: str,
                  layout: str | None = None, preheader: str | None = None, title: str | None = None,
                  cache_key: tuple[Hashable, Hashable] | None = None,
                  cache: TemplateCache = DEFAULT_CACHE) -> CompiledTemplate:
    """A template version compiled inside its layout, cached by (template_id, version) or by source.

    The template's preheader and title are plain text (escaped like any value) and become its defaults: a
    render's context may still set them.
    """
    shape = layout_name(layout)
    entry_key = (cache_key if cache_key is not None else (subject_tpl, html_tpl, text_tpl, preheader, title),
                 ("email", language, shape.value))
    compiled = cache.lookup(entry_key)
    if compiled is None:
        lang = template_language(language)
        frame = email_frame(lang, shape)
        own = tuple((name, value) for name, value in (("preheader", preheader), ("title", title)) if value)
        if own:
            frame = msgspec.structs.replace(frame, defaults=frame.defaults + own)
        compiled = compile_template(subject_tpl, html_tpl.replace("<p>", PARAGRAPH), text_tpl, language=lang,
                                    frame=frame)
        cache.store(entry_key, compiled)
    return compiled


def render_email(compiled: CompiledTemplate, context: Mapping[str, Any]) -> RenderedEmail:
    """The campaign hot path: one contact's context through a compiled, framed template."""
    subject, html, text = render_parts(compiled, context)
    return RenderedEmail(subject=subject, html=html, text=text)


def build_email(
    subject_tpl: str, html_tpl: str, text_tpl: str | None, context: Mapping[str, Any], *, language: str,
    unsubscribe_url: str, layout: str | None = None, preheader: str | None = None, title: str | None = None,
    sender: Mapping[str, str] | None = None, sender_address: str | None = None, brand: str | None = None,
    cache_key: tuple[Hashable, Hashable] | None = None,
) -> RenderedEmail:
    """Render a template for one contact, wrap it in the layout, and derive the text part."""
    compiled = compile_email(subject_tpl, html_tpl, text_tpl, language=language, layout=layout,
                             preheader=preheader, title=title, cache_key=cache_key)
    ctx = dict(sender or {})
    ctx.update(context)
    ctx["unsubscribe_url"] = ctx["unsubscribeUrl"] = unsubscribe_url
    for name, value in (("sender_address", sender_address), ("brand", brand)):
        if value:
            ctx[name] = value
    return render_email(compiled, ctx)
