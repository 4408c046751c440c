"""The one email layout: a 600 px table shell per language, CSS inlined once, and `build_email`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from functools import lru_cache
from typing import Any

import css_inline
import msgspec

from engine.languages import direction, template_language
from engine.plaintext import html_to_text
from engine.rendering import (
    DEFAULT_CACHE,
    CompiledTemplate,
    Frame,
    TemplateCache,
    compile_template,
    render_parts,
)

__all__ = ["RenderedEmail", "build_email", "compile_email", "email_frame", "html_to_text", "render_email"]

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

_STYLE = """
body { margin:0; padding:0; background-color:#f4f5f7; -webkit-text-size-adjust:100%; }
.wrapper { width:100%; background-color:#f4f5f7; }
.outer { padding:24px 12px; }
.container { width:100%; max-width:600px; background-color:#ffffff; border-radius:6px; }
.content { padding:32px 32px 16px 32px; font-family:FONT; font-size:16px; line-height:1.6; color:#1f2933;
           text-align:ALIGN; direction:DIR; }
.footer { padding:16px 32px 8px 32px; font-family:FONT; font-size:12px; line-height:1.5; color:#6b7280;
          text-align:ALIGN; direction:DIR; }
.footer-link { color:#6b7280; text-decoration:underline; }
.preheader { display:none; max-height:0; max-width:0; overflow:hidden; mso-hide:all; font-size:1px;
             line-height:1px; color:#f4f5f7; opacity:0; }
"""

# Layout variables a render may leave out; given as template globals so no Undefined is built per message.
LAYOUT_DEFAULTS: tuple[tuple[str, str], ...] = (("preheader", ""), ("brand", ""), ("sender_address", ""))

# Markers survive css_inline as text/comments and become Jinja afterwards; the body is inserted between.
_SHELL = """<!DOCTYPE html>
<html lang="LANG" dir="DIR">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="X-UA-Compatible" content="IE=edge">
<meta name="x-apple-disable-message-reformatting">
<title></title>
<style>STYLE</style>
</head>
<body>
<div class="preheader">@@PREHEADER@@</div>
<table role="presentation" class="wrapper" width="100%" cellpadding="0" cellspacing="0" border="0">
<tr><td class="outer" align="center">
<!--[if mso]><table role="presentation" width="600" align="center" cellpadding="0" cellspacing="0" border="0"><tr><td><![endif]-->
<table role="presentation" class="container" width="600" align="center" cellpadding="0" cellspacing="0" border="0">
<tr><td class="content" dir="DIR" align="ALIGN">@@BODY@@</td></tr>
<tr><td class="footer" dir="DIR" align="ALIGN">
<!--@@IF_BRAND@@--><p style="margin:0 0 4px 0;">@@BRAND@@</p><!--@@END@@-->
<!--@@IF_ADDRESS@@--><p style="margin:0 0 4px 0;">@@ADDRESS@@</p><!--@@END@@-->
<p style="margin:0;"><a class="footer-link" href="@@UNSUBSCRIBE_URL@@">LABEL</a></p>
</td></tr>
</table>
<!--[if mso]></td></tr></table><![endif]-->
</td></tr>
</table>
</body>
</html>
"""

_JINJA = {
    "@@PREHEADER@@": "{{ preheader }}",
    "<!--@@IF_BRAND@@-->": "{% if brand %}",
    "@@BRAND@@": "{{ brand }}",
    "<!--@@IF_ADDRESS@@-->": "{% if sender_address %}",
    "@@ADDRESS@@": "{{ sender_address }}",
    "<!--@@END@@-->": "{% endif %}",
    "@@UNSUBSCRIBE_URL@@": "{{ unsubscribe_url }}",
}

_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False, keep_style_tags=False, keep_link_tags=False)


class RenderedEmail(msgspec.Struct, frozen=True, kw_only=True):
    """One message ready for MIME: subject, HTML part (layout included) and text part."""

    subject: str
    html: str
    text: str


@lru_cache(maxsize=16)
def email_frame(language: str) -> Frame:
    """The layout shell for a language with its CSS inlined, as Jinja around the body; built once."""
    lang = template_language(language)
    rtl = direction(lang) == "rtl"
    style = (
        _STYLE.replace("FONT", FONT_STACKS.get(lang, _LATIN))
        .replace("ALIGN", "right" if rtl else "left").replace("DIR", "rtl" if rtl else "ltr")
    )
    shell = (
        _SHELL.replace("STYLE", style).replace("LANG", lang).replace("DIR", "rtl" if rtl else "ltr")
        .replace("ALIGN", "right" if rtl else "left").replace("LABEL", UNSUBSCRIBE_LABELS[lang])
    )
    inlined = _INLINER.inline(shell)
    if "{{" in inlined or "{%" in inlined or "{#" in inlined:
        raise AssertionError("layout shell must not contain Jinja syntax before markers are replaced")
    for marker, jinja in _JINJA.items():
        inlined = inlined.replace(marker, jinja)
    prefix, suffix = inlined.split("@@BODY@@")
    footer = (
        "\n\n-- \n{% if brand %}{{ brand }}\n{% endif %}{% if sender_address %}{{ sender_address }}\n{% endif %}"
        + UNSUBSCRIBE_LABELS[lang] + ": {{ unsubscribe_url }}\n"
    )
    return Frame(html_prefix=prefix, html_suffix=suffix, text_footer=footer, defaults=LAYOUT_DEFAULTS)


def compile_email(subject_tpl: str, html_tpl: str, text_tpl: str | None = None, *, language: str,
                  cache_key: tuple[Hashable, Hashable] | None = None,
                  cache: TemplateCache = DEFAULT_CACHE) -> CompiledTemplate:
    """A template version compiled inside the layout, cached by (template_id, version) or by source."""
    entry_key = (cache_key if cache_key is not None else (subject_tpl, html_tpl, text_tpl), ("email", language))
    compiled = cache.lookup(entry_key)
    if compiled is None:
        lang = template_language(language)
        compiled = compile_template(subject_tpl, html_tpl.replace("<p>", PARAGRAPH), text_tpl, language=lang,
                                    frame=email_frame(lang))
        cache.store(entry_key, compiled)
    return compiled


def render_email(compiled: CompiledTemplate, context: Mapping[str, Any]) -> RenderedEmail:
    """The campaign hot path: one contact's context through a compiled, framed template."""
    subject, html, text = render_parts(compiled, context)
    return RenderedEmail(subject=subject, html=html, text=text)


def build_email(
    subject_tpl: str, html_tpl: str, text_tpl: str | None, context: Mapping[str, Any], *, language: str,
    unsubscribe_url: str, preheader: str | None = None, sender_address: str | None = None,
    brand: str | None = None, cache_key: tuple[Hashable, Hashable] | None = None,
) -> RenderedEmail:
    """Render a template for one contact, wrap it in the layout, and derive the text part."""
    compiled = compile_email(subject_tpl, html_tpl, text_tpl, language=language, cache_key=cache_key)
    ctx = dict(context)
    ctx["unsubscribe_url"] = ctx["unsubscribeUrl"] = unsubscribe_url
    for name, value in (("preheader", preheader), ("sender_address", sender_address), ("brand", brand)):
        if value:
            ctx[name] = value
    return render_email(compiled, ctx)
