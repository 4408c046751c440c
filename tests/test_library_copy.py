"""The template library's copy (engine/starters/library): shape, variables, length, links and wording of every message."""

from __future__ import annotations

import re
import tomllib
import unicodedata
from pathlib import Path

import pytest
from jinja2 import Environment, StrictUndefined, Undefined
from jinja2.meta import find_undeclared_variables

LIBRARY = Path(__file__).resolve().parent.parent / "engine" / "starters" / "library"
TENANTS = ("sos-expat", "ulixai")
LANGUAGES = ("fr", "en", "es", "de", "pt", "ru", "zh", "hi", "ar")
STEPS = ("opening", "follow_up_1", "follow_up_2")
FIELDS = ("subject", "preheader", "body")
# The seed's seven audience tags (engine.seed.BASE_TAGS): both tenants write to each of them.
CATEGORIES = ("avocat", "prestataire", "expatrie", "client", "partenaire", "blogueur", "influenceur")
VARIABLES = frozenset({"first_name", "company", "website", "sender_name", "sender_company", "sender_website"})
MAX_PREHEADER = 90
MAX_SUBJECT = 78
# Words in the message itself (the sign-off block is not counted). Chinese is counted in characters: a
# Chinese character carries about half an English word, so 60-120 words read as about 110-260 characters.
WORDS = (60, 120)
ZH_CHARS = (110, 260)

# The only Jinja the library uses: a bare variable, and `if` (with `else`) around a variable that may be absent.
_EXPRESSION = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
_STATEMENT = re.compile(r"\{%\s*(if [a-z_]+|else|endif)\s*%\}")
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)
_URL = re.compile(r"https?://\S+|www\.\S+", re.I)
_HTML = re.compile(r"</?[A-Za-z][^>]*>|&[a-z]+;|&#\d+;")

# Wording that spam filters and readers take for a mass mailing, per language (lower case, matched as substrings
# of the lower-cased text); money symbols, "!!", ALL CAPS and percentages are checked separately.
SPAM_WORDS = {
    "fr": ["gratuit", "garanti", "urgent", "cliquez", "offre limitée", "dernière chance", "agissez", "promo",
           "sans engagement", "100 %", "argent"],
    "en": ["free", "guarantee", "act now", "click here", "urgent", "limited time", "last chance", "risk-free",
           "no obligation", "winner", "cash", "100%", "buy now", "don't miss"],
    "es": ["gratis", "gratuito", "garantiza", "urgente", "haga clic", "haz clic", "última oportunidad",
           "tiempo limitado", "sin compromiso", "dinero"],
    "de": ["kostenlos", "gratis", "garantie", "garantiert", "dringend", "klicken sie hier", "jetzt handeln",
           "nur heute", "letzte chance", "unverbindlich"],
    "pt": ["grátis", "gratuito", "garantia", "garantido", "urgente", "clique aqui", "última chance",
           "tempo limitado", "sem compromisso", "dinheiro"],
    "ru": ["бесплатн", "гарант", "срочно", "нажмите", "кликните", "только сегодня", "последний шанс",
           "ограниченное время", "выгодн"],
    "zh": ["免费", "保证", "紧急", "点击这里", "立即行动", "限时", "最后机会", "赚钱"],
    "hi": ["मुफ़्त", "मुफ्त", "फ्री", "गारंटी", "तुरंत", "अभी क्लिक", "यहाँ क्लिक", "सीमित समय", "आखिरी मौका"],
    "ar": ["مجان", "مضمون", "ضمان", "عاجل", "انقر هنا", "اضغط هنا", "لفترة محدودة", "الفرصة الأخيرة", "فورا"],
}
_MONEY = re.compile(r"[$€£¥₹₽]")
# Words written in capitals on purpose: brand names and acronyms.
CAPITALS_ALLOWED = frozenset({"SOS", "RGPD", "GDPR", "DSGVO", "LGPD", "FAQ", "PDF", "CV", "URL", "HR", "RH", "NIE", "NIF"})

# Invented proof points: the copy states no testimonial, figure or term the brand has not confirmed. These are the
# obvious signs of one, a dated anecdote ("last week an engineer in Dubai called us"), a customer story or a count;
# matched as lower-case substrings (English as whole words). Digits are checked separately, outside links and variables.
INVENTED_FACTS = {
    "fr": ["la semaine dernière", "le mois dernier", "l'an dernier", "l'année dernière", "un de nos clients",
           "une de nos clientes", "témoignage"],
    "en": ["last week", "last month", "last year", "yesterday", "this morning", "recently", "a recent", "every week we",
           "one of our clients", "one of our customers", "a client of ours", "testimonial", "on average", "percent",
           "per cent"],
    "es": ["la semana pasada", "el mes pasado", "el año pasado", "uno de nuestros clientes", "testimonio"],
    "de": ["letzte woche", "letzten monat", "letztes jahr", "vergangene woche", "vergangenen woche", "einer unserer kunden",
           "erfahrungsbericht"],
    "pt": ["semana passada", "mês passado", "ano passado", "um de nossos clientes", "um dos nossos clientes", "depoimento"],
    "ru": ["на прошлой неделе", "в прошлом месяце", "в прошлом году", "один из наших клиентов", "отзыв"],
    "zh": ["上周", "上个月", "去年", "我们的一位客户", "真实案例"],
    "hi": ["पिछले सप्ताह", "पिछले हफ़्ते", "पिछले महीने", "पिछले साल", "हमारे एक ग्राहक"],
    "ar": ["الأسبوع الماضي", "الشهر الماضي", "العام الماضي", "أحد عملائنا", "شهادة عميل"],
}

# The script each language is written in: every letter of its message that is not Latin must be in it.
SCRIPTS = {"ru": "CYRILLIC", "zh": "CJK", "hi": "DEVANAGARI", "ar": "ARABIC"}

FULL = {"first_name": "Amal", "company": "Nour Conseil", "website": "https://nour-conseil.example",
        "sender_name": "Claire Martin", "sender_company": "SOS-Expat", "sender_website": "https://sos-expat.example"}
BARE = {"sender_name": "Claire Martin", "sender_company": "SOS-Expat", "sender_website": "https://sos-expat.example"}

ENV = Environment(undefined=Undefined, autoescape=False, keep_trailing_newline=True)
STRICT = Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def _files() -> list[Path]:
    return sorted(LIBRARY.glob("*/*.toml"))


def _messages() -> list[tuple[str, str, str, dict]]:
    found = []
    for path in _files():
        data = tomllib.loads(path.read_text("utf-8"))
        for lang in LANGUAGES:
            for step in STEPS:
                found.append((f"{path.parent.name}/{path.stem}/{lang}/{step}", lang, step, data[lang][step]))
    return found


def _render(source: str, values: dict) -> str:
    return ENV.from_string(source).render(values)


def _message_words(body: str, lang: str) -> int:
    """Words of the rendered message without its last paragraph (the sign-off block)."""
    text = "\n\n".join(body.strip().split("\n\n")[:-1])
    if lang == "zh":
        return sum(1 for ch in text if "CJK" in unicodedata.name(ch, ""))
    # Whitespace-separated, so that Devanagari vowel signs and Arabic marks do not split a word.
    return sum(1 for token in text.split() if any(ch.isalpha() for ch in token))


def _in_script(text: str, script: str) -> float:
    # Latin letters are allowed (brand names, the link): the rest must all be in the language's script.
    letters = [ch for ch in _JINJA.sub("", text) if ch.isalpha() and not ch.isascii()]
    return sum(script in unicodedata.name(ch, "") for ch in letters) / max(len(letters), 1)


MESSAGES = _messages()


def test_seven_categories_per_tenant_with_the_nine_languages_in_order() -> None:
    assert {p.name for p in LIBRARY.iterdir() if p.is_dir()} == set(TENANTS)
    for tenant in TENANTS:
        files = sorted((LIBRARY / tenant).glob("*.toml"))
        assert {p.stem for p in files} == set(CATEGORIES), tenant
        for path in files:
            data = tomllib.loads(path.read_text("utf-8"))
            assert list(data) == ["category", "label", "description", *LANGUAGES], path
            assert data["category"] == path.stem and re.fullmatch(r"[a-z][a-z0-9-]*", path.stem)
            assert data["label"].strip() and "\n" not in data["label"]
            assert 20 <= len(data["description"]) <= 200 and "\n" not in data["description"]
            for lang in LANGUAGES:
                assert list(data[lang]) == list(STEPS), (path, lang)
                for step in STEPS:
                    assert list(data[lang][step]) == list(FIELDS), (path, lang, step)
    assert len(MESSAGES) == len(TENANTS) * len(CATEGORIES) * len(LANGUAGES) * len(STEPS) == 378


def test_readme_names_every_category_and_language() -> None:
    readme = (LIBRARY / "README.md").read_text("utf-8")
    for path in _files():
        assert f"`{path.stem}`" in readme, path
    for lang in LANGUAGES:
        assert re.search(rf"^- \*\*{lang}\*\*", readme, re.M), lang


@pytest.mark.parametrize(("where", "lang", "step", "message"), MESSAGES, ids=[m[0] for m in MESSAGES])
def test_message(where: str, lang: str, step: str, message: dict) -> None:
    subject, preheader, body = message["subject"], message["preheader"], message["body"]
    for field, text in (("subject", subject), ("preheader", preheader)):
        assert text.strip() == text and text and "\n" not in text, field
        assert not _URL.search(text), field
    assert len(_render(subject, FULL)) <= MAX_SUBJECT
    assert len(_render(preheader, FULL)) <= MAX_PREHEADER
    assert preheader != subject

    # Only the documented variables, only the two Jinja forms, and the template parses.
    for source in (subject, preheader, body):
        assert find_undeclared_variables(ENV.parse(source)) <= VARIABLES
        rest = _STATEMENT.sub("", _EXPRESSION.sub("", source))
        assert "{{" not in rest and "{%" not in rest and "}}" not in rest and "%}" not in rest, rest
    assert not _HTML.search(body)

    # Plain-text paragraphs; the last is the sign-off: a closing line, then the sender's name and company.
    assert body.startswith("\n") is False and body.endswith("\n")
    assert "\n\n\n" not in body and " \n" not in body and "\t" not in body
    sign_off = body.strip().split("\n\n")[-1].split("\n")
    assert sign_off[-2:] == ["{{ sender_name }}", "{{ sender_company }}"], sign_off
    assert len(sign_off) == 3 and "{" not in sign_off[0], sign_off

    brand = {"sender_company": "SOS-Expat" if where.startswith("sos-expat/") else "Ulixai"}
    for values in ({**FULL, **brand}, {**BARE, **brand}):
        text = _render(body, values) + "\n" + _render(subject, values) + "\n" + _render(preheader, values)
        STRICT.from_string(body).render(FULL)  # every variable the copy uses is one a full contact has
        assert "  " not in text and " ," not in text and " ." not in text and "()" not in text, (values, text)
        assert not re.search(r"^[ ,.;:،，。]", text, re.M), text
        assert not re.search(r"[«“„\"]\s*[»”“\"]", text), text
        urls = _URL.findall(text)
        assert len(urls) <= 1 and all(u.rstrip(".,;)") == values["sender_website"] for u in urls), urls

    rendered = _render(body, FULL)
    low = (subject + "\n" + preheader + "\n" + rendered).lower()
    for word in SPAM_WORDS[lang]:
        # English words are matched whole ("free" is not "freelance"); the others as stems.
        assert not re.search(rf"\b{re.escape(word)}\b" if lang == "en" else re.escape(word), low), word
    assert not _MONEY.search(low) and "!!" not in low and "%" not in low
    assert rendered.count("!") + rendered.count("！") <= 1 and "!" not in subject + preheader
    capitals = {w for w in re.findall(r"\b[A-ZÀ-Ý]{3,}\b", subject + " " + rendered)} - CAPITALS_ALLOWED
    assert not capitals, capitals

    for word in INVENTED_FACTS[lang]:
        assert not re.search(rf"\b{re.escape(word)}\b" if lang == "en" else re.escape(word), low), word
    # No counts, dates or figures: digits only ever appear in a link or a variable.
    assert not re.search(r"\d", _URL.sub("", _JINJA.sub("", subject + "\n" + preheader + "\n" + body))), where

    words = _message_words(rendered, lang)
    low_limit, high_limit = ZH_CHARS if lang == "zh" else WORDS
    assert low_limit <= words <= high_limit, words
    if lang in SCRIPTS:
        assert _in_script(rendered, SCRIPTS[lang]) > 0.97


def test_no_message_is_a_copy_of_another() -> None:
    bodies: dict[str, str] = {}
    for where, _lang, _step, message in MESSAGES:
        key = _render(message["body"], FULL)
        assert key not in bodies, (where, bodies.get(key))
        bodies[key] = where
    for path in _files():
        data = tomllib.loads(path.read_text("utf-8"))
        for lang in LANGUAGES:
            subjects = [data[lang][step]["subject"] for step in STEPS]
            assert len(set(subjects)) == 3, (path, lang)


def test_categories_are_the_seed_audience_tags() -> None:
    from engine.seed import BASE_TAGS

    assert set(CATEGORIES) == {tag for tag in BASE_TAGS if not tag.startswith("lang-")}


def test_every_message_is_accepted_by_the_engine_template_check() -> None:
    from engine.rendering import check_template

    for where, _lang, _step, message in MESSAGES:
        assert check_template(message["subject"], message["body"], message["body"]) == [], where
