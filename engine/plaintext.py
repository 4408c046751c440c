"""Plain text from HTML: the text/plain part of every message, and text templates derived from HTML ones."""

from __future__ import annotations

import re
from html.parser import HTMLParser

# The stdlib parser is enough here: we only need block boundaries, links and entities, it tolerates broken
# markup, and it adds no dependency (html2text is GPL and heavier; BeautifulSoup would add two packages).
_SKIPPED = frozenset({"style", "script", "head", "title", "template"})
_PARAGRAPHS = frozenset(
    {"p", "div", "table", "ul", "ol", "blockquote", "section", "article", "header", "footer", "pre",
     "h1", "h2", "h3", "h4", "h5", "h6", "hr", "center", "address", "dl", "figure"}
)
_LINES = frozenset({"tr", "li", "dt", "dd", "caption"})
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none", re.I)
_SPACES = re.compile(r"[ \t\r\n\f\v]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_VOID = frozenset({"br", "img", "hr", "meta", "link", "input", "col", "area", "base", "wbr", "source"})

# Jinja spans are swapped for private-use markers while the HTML is parsed, so they survive as text.
_JINJA_SPAN = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_MARKER = re.compile("\ue000(\\d+)\ue001")


class _TextParser(HTMLParser):
    """Collects text with paragraph and line breaks; links become `text (URL)`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.pre = 0
        self.hidden: list[str] = []
        self.links: list[tuple[str, int]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.hidden:
            if tag not in _VOID:
                self.hidden.append(tag)
            return
        attr = dict(attrs)
        if tag not in _VOID and _HIDDEN_STYLE.search(attr.get("style") or ""):
            self.hidden.append(tag)  # preheaders and other invisible blocks stay out of the text
            return
        if tag in _SKIPPED:
            self.skip += 1
        elif tag == "br":
            self.out.append("\n")
        elif tag in _PARAGRAPHS:
            self.out.append("\n\n")
            self.pre += tag == "pre"
        elif tag in _LINES:
            self.out.append("\n- " if tag == "li" else "\n")
        elif tag in ("td", "th"):
            self.out.append(" ")
        elif tag == "a":
            self.links.append((attr.get("href") or "", len(self.out)))
        elif tag == "img" and attr.get("alt"):
            self.out.append(attr["alt"] or "")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.hidden:
            if tag in self.hidden:
                while self.hidden and self.hidden.pop() != tag:
                    pass
            return
        if tag in _SKIPPED:
            self.skip = max(0, self.skip - 1)
        elif tag in _PARAGRAPHS:
            self.out.append("\n\n")
            self.pre -= tag == "pre" and self.pre > 0
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            self._close_link(href.strip(), start)

    def _close_link(self, href: str, start: int) -> None:
        if not href or href.startswith(("#", "javascript:")):
            return
        label = _SPACES.sub(" ", "".join(self.out[start:])).strip()
        shown = href[7:] if href.startswith("mailto:") else href
        if not label:
            self.out.append(shown)
        elif label not in (href, shown):
            self.out.append(f" ({shown})")

    def handle_data(self, data: str) -> None:
        if self.skip or self.hidden:
            return
        self.out.append(data if self.pre else _SPACES.sub(" ", data))


def html_to_text(html: str) -> str:
    """Readable plain text from HTML: paragraphs and breaks kept, links as `text (URL)`, entities unescaped."""
    parser = _TextParser()
    parser.feed(html)
    parser.close()
    lines = [line.strip(" ") for line in "".join(parser.out).split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n")


def text_template_from_html(source: str) -> str | None:
    """A Jinja text template from a Jinja HTML one, or None when its Jinja tags do not survive the conversion."""
    spans: list[str] = []

    def protect(match: re.Match[str]) -> str:
        spans.append(match.group(0))
        return f"\ue000{len(spans) - 1}\ue001"

    text = html_to_text(_JINJA_SPAN.sub(protect, source))
    # Entities such as &#123;&#123; would become new Jinja syntax once unescaped: refuse rather than guess.
    if "{{" in text or "{%" in text or "{#" in text:
        return None
    return _MARKER.sub(lambda m: spans[int(m.group(1))], text)
