"""Template rendering: a sandboxed Jinja2 environment, save-time checks, compiled-template cache, contexts."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from datetime import date, datetime
from typing import Any

import msgspec
from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.meta import find_undeclared_variables
from jinja2.runtime import Context, missing
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import pass_context

from engine.dates import format_date
from engine.errors import Invalid, Unprocessable
from engine.languages import template_language
from engine.plaintext import html_to_text, text_template_from_html

# RFC 5322 §2.1.1: a header line is at most 998 characters.
MAX_SUBJECT_CHARS = 998
# Gmail clips bodies past ~102 KB; 256 KiB leaves room for generous copy but refuses pasted web pages.
MAX_BODY_BYTES = 256 * 1024
# Guards for the sandbox: `'x' * 10**9` or `9 ** 9 ** 9` must not eat a worker's memory or CPU.
MAX_REPEAT_ITEMS = 100_000
MAX_POWER_EXPONENT = 64
COMPILE_CACHE_SIZE = 1024
# The message's subject as its block rendered it, for a frame to show again (the layout's <title>) without
# rendering the block twice. A dunder name: templates may not read it (check_template refuses them).
SUBJECT = "__subject__"

# Names a template may not reference: Jinja's callables with reachable __globals__, and the usual
# server-side-template-injection probes from other frameworks.
UNSAFE_NAMES = frozenset(
    {"cycler", "joiner", "lipsum", "namespace", "self", "super", "config", "request", "session", "g",
     "url_for", "get_flashed_messages", "os", "sys", "builtins", "importlib", "subprocess", "eval", "exec",
     "open", "getattr", "setattr", "globals", "locals", "vars", "type", "object", "loop_controls"}
)
# Contact data comes from scrapers and uploads: markup in it must stay escaped, so no opting out.
UNSAFE_FILTERS = frozenset({"safe", "attr"})

# Seed form `{firstName}`: one brace each side, an identifier inside, not part of `{{`, `{%` or `}}`.
_SEED_PLACEHOLDER = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")
_LINE_BREAKS = re.compile(r"[\r\n]+\s*")

# Contact fields exposed to templates under their snake_case name and the seed's camelCase alias.
CONTACT_FIELDS: tuple[tuple[str, str | None], ...] = (
    ("first_name", "firstName"), ("last_name", "lastName"), ("company", None), ("website", None),
    ("email", None), ("country", None), ("language", None), ("category", None),
)


class TemplateRejected(Invalid):
    """A template that may not be saved or rendered; `field` is subject, body_html or body_text."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", field=field)
        self.reason = reason


class MissingVariable(Unprocessable):
    """The template uses a variable the contact does not have; never rendered as an empty string."""

    def __init__(self, name: str) -> None:
        super().__init__(f"missing variable {name!r}", field=name, extra={"variable": name})
        self.name = name


class _MissingName(UndefinedError):
    """Carries the bare variable name out of the Jinja runtime."""


class _Missing(StrictUndefined):
    """StrictUndefined whose error message is just the missing name."""

    __slots__ = ()

    def __init__(self, hint: str | None = None, obj: Any = missing, name: str | None = None, exc: Any = None):
        # Slots set directly: `|default` and `is defined` create one of these per use on the hot path.
        self._undefined_hint = hint
        self._undefined_obj = obj
        self._undefined_name = name
        # The sandbox passes exc=SecurityError for unsafe attributes: that must stay a refusal.
        self._undefined_exception = SecurityError if exc is SecurityError else _MissingName

    @property
    def _undefined_message(self) -> str:
        if self._undefined_exception is SecurityError:
            return self._undefined_hint or "unsafe access"
        return self._undefined_name or self._undefined_hint or "?"


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox plus size guards on `*` and `**`."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_POWER_EXPONENT:
            raise SecurityError("exponent too large")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    if len(seq) * times > MAX_REPEAT_ITEMS:
                        raise SecurityError("repetition too large")
        return super().call_binop(context, operator, left, right)


@pass_context
def _date_filter(context: Any, value: date | datetime | str, language: str | None = None) -> str:
    """`{{ today|date }}` in the template's language, or `{{ today|date('en') }}`."""
    return format_date(value, language or context.get("template_language") or "en")


def _make_environment() -> _Sandbox:
    env = _Sandbox(undefined=_Missing, autoescape=True, auto_reload=False, cache_size=0)
    for name in ("cycler", "joiner", "lipsum", "namespace"):
        env.globals.pop(name, None)
    env.filters["date"] = _date_filter
    return env


ENVIRONMENT = _make_environment()


def convert_placeholders(source: str) -> str:
    """Seed form `{firstName}` -> Jinja `{{ firstName }}`; existing Jinja syntax is left alone."""
    if "{" not in source:
        return source
    return _SEED_PLACEHOLDER.sub(r"{{ \1 }}", source)


_TAG_NAMES = {nodes.Extends: "extends", nodes.Include: "include", nodes.Import: "import", nodes.FromImport: "from"}


def _ast_problems(field: str, tree: nodes.Template) -> list[TemplateRejected]:
    """Walk the parsed template and name every construct the sandbox policy forbids."""
    found: list[TemplateRejected] = []

    def refuse(reason: str) -> None:
        found.append(TemplateRejected(field, reason))

    for node in tree.find_all(nodes.Node):
        if isinstance(node, nodes.Extends | nodes.Include | nodes.Import | nodes.FromImport):
            refuse(f"{{% {_TAG_NAMES[type(node)]} %}} is not allowed")
        elif isinstance(node, nodes.Block):
            refuse("{% block %} is not allowed")
        elif isinstance(node, nodes.EvalContextModifier):
            refuse("{% autoescape %} is not allowed")
        elif isinstance(node, nodes.Name) and (node.name.startswith("__") or node.name in UNSAFE_NAMES):
            refuse(f"unsafe name {node.name!r}")
        elif isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            refuse(f"access to private attribute {node.attr!r}")
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and (
            isinstance(node.arg.value, str) and node.arg.value.startswith("_")
        ):
            refuse(f"access to private item {node.arg.value!r}")
        elif isinstance(node, nodes.Const) and isinstance(node.value, str) and "__" in node.value:
            refuse(f"dunder string {node.value!r}")
        elif isinstance(node, nodes.Filter) and (
            node.name in UNSAFE_FILTERS or node.name not in ENVIRONMENT.filters
        ):
            refuse(f"filter {node.name!r} is not allowed")
        elif isinstance(node, nodes.Test) and node.name not in ENVIRONMENT.tests:
            refuse(f"unknown test {node.name!r}")
    if macro := _recursive_macro(tree):
        refuse(f"macro {macro!r} calls itself (directly or through another): it would never end")
    return found


def _recursive_macro(tree: nodes.Template) -> str | None:
    """The name of a macro on a cycle of macro calls, or None."""
    calls = {m.name: {c.node.name for c in m.find_all(nodes.Call) if isinstance(c.node, nodes.Name)}
             for m in tree.find_all(nodes.Macro)}
    for name in calls:
        pending, seen = list(calls[name]), set()
        while pending:
            callee = pending.pop()
            if callee == name:
                return name
            if callee not in seen:
                seen.add(callee)
                pending.extend(calls.get(callee, ()))
    return None


def _source_problems(field: str, source: str) -> list[TemplateRejected]:
    try:
        tree = ENVIRONMENT.parse(convert_placeholders(source))
    except TemplateSyntaxError as exc:
        return [TemplateRejected(field, f"syntax error on line {exc.lineno}: {exc.message}")]
    return _ast_problems(field, tree)


def check_template(subject: str, body_html: str, body_text: str | None = None) -> list[TemplateRejected]:
    """Every reason the template may not be saved; an empty list means it is accepted."""
    problems: list[TemplateRejected] = []
    if "\r" in subject or "\n" in subject:
        problems.append(TemplateRejected("subject", "line breaks are not allowed (header injection)"))
    if len(subject) > MAX_SUBJECT_CHARS:
        problems.append(TemplateRejected("subject", f"longer than {MAX_SUBJECT_CHARS} characters"))
    for field, source in (("subject", subject), ("body_html", body_html), ("body_text", body_text)):
        if source is None:
            continue
        if field != "subject" and len(source.encode()) > MAX_BODY_BYTES:
            problems.append(TemplateRejected(field, f"larger than {MAX_BODY_BYTES} bytes"))
            continue
        problems.extend(_source_problems(field, source))
    return problems


def validate_template(subject: str, body_html: str, body_text: str | None = None) -> None:
    """Raise the first TemplateRejected that `check_template` finds."""
    problems = check_template(subject, body_html, body_text)
    if problems:
        raise problems[0]


def template_variables(*sources: str | None) -> frozenset[str]:
    """The variables the sources use without defining them (both placeholder forms)."""
    used: set[str] = set()
    for source in sources:
        if source:
            used |= find_undeclared_variables(ENVIRONMENT.parse(convert_placeholders(source)))
    return frozenset(used)


class Frame(msgspec.Struct, frozen=True, kw_only=True):
    """Trusted Jinja source around a user's template: the layout shell and the text footer."""

    html_prefix: str = ""
    html_suffix: str = ""
    text_footer: str = ""
    # Variables the frame reads, with the value used when a render does not set them.
    defaults: tuple[tuple[str, Any], ...] = ()


NO_FRAME = Frame()


class CompiledTemplate(msgspec.Struct, frozen=True, kw_only=True):
    """One template version compiled once: blocks `subject`, `html` (wrapping `body`), `text`, `text_footer`."""

    language: str
    variables: frozenset[str]
    template: Any
    has_text: bool
    # Template globals as one flat dict, merged into each render's variables in a single C-level copy.
    base: dict[str, Any] = {}


def _derived_text(body_html: str) -> str | None:
    text = text_template_from_html(body_html)
    if text is None or _source_problems("body_text", text):
        return None
    return text


def compile_template(
    subject: str, body_html: str, body_text: str | None = None, *, language: str = "en", frame: Frame = NO_FRAME
) -> CompiledTemplate:
    """Check, convert placeholders and compile the three parts into one Jinja template."""
    validate_template(subject, body_html, body_text)
    lang = template_language(language)
    html = convert_placeholders(body_html)
    text = convert_placeholders(body_text) if body_text is not None else _derived_text(html)
    # Each part parsed alone and holds no {% block %}/{% autoescape %}, so it cannot close ours early.
    source = (
        "{% block subject %}{% autoescape false %}" + convert_placeholders(subject)
        + "{% endautoescape %}{% endblock %}"
        + "{% block html %}" + frame.html_prefix + "{% block body %}" + html + "{% endblock %}"
        + frame.html_suffix + "{% endblock %}"
        + "{% block text %}{% autoescape false %}" + (text or "") + "{% endautoescape %}{% endblock %}"
        + "{% block text_footer %}{% autoescape false %}" + frame.text_footer
        + "{% endautoescape %}{% endblock %}"
    )
    template = ENVIRONMENT.from_string(source, globals={"template_language": lang, **dict(frame.defaults)})
    return CompiledTemplate(
        language=lang, variables=template_variables(subject, body_html, body_text),
        template=template, has_text=text is not None, base=dict(template.globals),
    )


def render_parts(compiled: CompiledTemplate, context: Mapping[str, Any]) -> tuple[str, str, str]:
    """(subject, html, text) of one message; MissingVariable or TemplateRejected when it cannot render."""
    template = compiled.template
    blocks = template.blocks
    # Same as template.new_context(context) without flattening the globals ChainMap on every render; the
    # globals' keys only matter to {% import %}, which check_template refuses.
    variables = {**compiled.base, **context}
    ctx = Context(ENVIRONMENT, variables, None, blocks)
    field = "subject"
    try:
        subject = variables[SUBJECT] = "".join(blocks["subject"](ctx))
        field = "body_html"
        html = "".join(blocks["html"](ctx))
        field = "body_text"
        if compiled.has_text:
            text = "".join(blocks["text"](ctx))
        else:
            text = html_to_text("".join(blocks["body"](ctx)))
        text = text.rstrip() + "".join(blocks["text_footer"](ctx))
    except _MissingName as exc:
        raise MissingVariable(str(exc)) from None
    except SecurityError as exc:
        raise TemplateRejected(field, f"unsafe operation: {exc}") from None
    except RecursionError:
        raise TemplateRejected(field, "nests too deeply to render") from None
    if "\r" in subject or "\n" in subject:
        subject = _LINE_BREAKS.sub(" ", subject)  # a value with a line break must not start a new header
    return subject, html, text


def render_body(compiled: CompiledTemplate, context: Mapping[str, Any]) -> str:
    """The HTML body alone, without the layout (previews, and the benchmark's body-only figure)."""
    ctx = Context(ENVIRONMENT, {**compiled.base, **context}, None, compiled.template.blocks)
    try:
        return "".join(compiled.template.blocks["body"](ctx))
    except _MissingName as exc:
        raise MissingVariable(str(exc)) from None
    except SecurityError as exc:
        raise TemplateRejected("body_html", f"unsafe operation: {exc}") from None


class TemplateCache:
    """LRU of compiled templates keyed by (template_id, version): each version compiles once per process."""

    def __init__(self, maxsize: int = COMPILE_CACHE_SIZE) -> None:
        self.maxsize = maxsize
        self.compiles = 0
        self._entries: OrderedDict[Hashable, CompiledTemplate] = OrderedDict()

    def lookup(self, entry_key: tuple[Hashable, Hashable]) -> CompiledTemplate | None:
        """The cached entry for ((template_id, version), variant), or None."""
        compiled = self._entries.get(entry_key)
        if compiled is not None:
            self._entries.move_to_end(entry_key)
        return compiled

    def store(self, entry_key: tuple[Hashable, Hashable], compiled: CompiledTemplate) -> CompiledTemplate:
        """Remember a freshly compiled entry, evicting the least recently used beyond `maxsize`."""
        self.compiles += 1
        self._entries[entry_key] = compiled
        if len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)
        return compiled

    def get(self, key: Hashable, subject: str, body_html: str, body_text: str | None = None, *,
            language: str = "en", frame: Frame = NO_FRAME) -> CompiledTemplate:
        """The compiled template for `key` (None: keyed by source), compiling it on first use."""
        entry_key = (key, frame) if key is not None else ((subject, body_html, body_text, language), frame)
        compiled = self.lookup(entry_key)
        if compiled is None:
            compiled = compile_template(subject, body_html, body_text, language=language, frame=frame)
            self.store(entry_key, compiled)
        return compiled

    def invalidate(self, template_id: Hashable) -> None:
        """Forget every cached version of one template (after an edit or a delete)."""
        for entry_key in [k for k in self._entries if isinstance(k[0], tuple) and k[0][:1] == (template_id,)]:
            del self._entries[entry_key]


# One cache per process is the point: workers render many campaigns from the same few template versions.
DEFAULT_CACHE = TemplateCache()


def invalidate(template_id: Hashable, cache: TemplateCache = DEFAULT_CACHE) -> None:
    """Drop a template's compiled versions from the process cache."""
    cache.invalidate(template_id)


def render_context(
    contact: Mapping[str, Any], custom: Mapping[str, Any] | None = None, unsubscribe_url: str | None = None,
    extra: Mapping[str, Any] | None = None, *, today: date | None = None,
) -> dict[str, Any]:
    """Template variables for one contact: snake_case and camelCase fields, custom fields, unsubscribe URL."""
    ctx: dict[str, Any] = {}
    if custom:
        # Custom fields come first so a custom "email" can never shadow the real address.
        ctx.update((k, v) for k, v in custom.items() if v is not None and v != "")
        ctx["custom"] = dict(custom)
    get = contact.get
    for snake, camel in CONTACT_FIELDS:
        value = get(snake)
        if value is None and camel is not None:
            value = get(camel)
        if value is None or value == "":
            continue  # absent stays absent: the template fails loudly or uses |default
        ctx[snake] = value
        if camel is not None:
            ctx[camel] = value
    if unsubscribe_url:
        ctx["unsubscribe_url"] = ctx["unsubscribeUrl"] = unsubscribe_url
    ctx["today"] = today or date.today()
    if extra:
        ctx.update(extra)
    return ctx
