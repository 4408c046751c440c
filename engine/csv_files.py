"""CSV files as scrapers and spreadsheets write them: encoding, separator and header columns, read as a stream."""

from __future__ import annotations

import codecs
import csv
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import msgspec

from engine.errors import Invalid

FIELDS = ("email", "first_name", "last_name", "company", "website", "country", "language", "category", "tags")
SAMPLE = 64 * 1024  # bytes read to detect the encoding and the separator: dozens of lines of any export
DELIMITERS = (",", ";", "\t", "|")  # in this order of preference when a sample fits several equally
DELIMITER_NAMES = {",": ",", ";": ";", "|": "|", "\t": "\t", "\\t": "\t", "tab": "\t", "comma": ",",
                   "semicolon": ";", "pipe": "|"}
# Bytes that Windows-1252 leaves undefined: a file holding them is Latin-1 (ISO-8859-1) instead.
_CP1252_HOLES = frozenset(b"\x81\x8d\x8f\x90\x9d")

# Header spellings per field, in the nine languages the engine serves and the ones exports commonly use.
# Headers are compared after _key(): lower case, accents and every non-letter dropped, so "E-mail",
# "e_mail" and "EMAIL " are one spelling. "nom" is French for the last name; "nombre" and "nome" (Spanish,
# Portuguese, Italian) are first names; a bare "name" is ambiguous and stays a custom field.
HEADER_SPELLINGS: dict[str, tuple[str, ...]] = {
    "email": ("email", "e-mail", "mail", "email address", "e-mail address", "courriel", "adresse email",
              "adresse e-mail", "adresse mail", "adresse courriel", "correo", "correo electrónico",
              "correo electronico", "email-adresse", "e-mail-adresse", "emailadresse", "endereço de email",
              "endereço de e-mail", "e-mail do contato", "indirizzo email", "posta elettronica", "emailadres",
              "почта", "электронная почта", "эл. почта", "e-mail адрес", "邮箱", "电子邮件", "电子邮箱", "郵箱",
              "ईमेल", "ई-मेल", "البريد الإلكتروني", "البريد الالكتروني", "بريد إلكتروني", "ايميل"),
    "first_name": ("first name", "firstname", "first", "given name", "forename", "prénom", "prenom",
                   "nombre", "nome", "primeiro nome", "vorname", "имя", "名", "名字", "पहला नाम",
                   "الاسم الأول"),
    "last_name": ("last name", "lastname", "last", "surname", "family name", "nom", "nom de famille",
                  "apellido", "apellidos", "sobrenome", "apelido", "cognome", "nachname", "familienname",
                  "фамилия", "姓", "姓氏", "उपनाम", "अंतिम नाम", "اسم العائلة", "الكنية"),
    "company": ("company", "company name", "organisation", "organization", "org", "business", "entreprise",
                "société", "raison sociale", "cabinet", "empresa", "compañía", "nombre de la empresa",
                "firma", "unternehmen", "azienda", "компания", "организация", "公司", "公司名称", "कंपनी",
                "الشركة", "شركة"),
    "website": ("website", "web site", "web", "site", "url", "homepage", "site web", "site internet",
                "sitio web", "página web", "webseite", "sito web", "сайт", "网站", "网址", "वेबसाइट",
                "الموقع", "موقع"),
    "country": ("country", "pays", "país", "pais", "land", "paese", "страна", "国家", "देश", "الدولة", "البلد",
                "بلد"),
    "language": ("language", "lang", "locale", "langue", "idioma", "sprache", "língua", "lingua", "язык",
                 "语言", "भाषा", "اللغة", "لغة"),
    "category": ("category", "catégorie", "categorie", "categoría", "categoria", "kategorie", "категория",
                 "类别", "分类", "श्रेणी", "الفئة", "فئة"),
    "tags": ("tags", "tag", "labels", "étiquettes", "etiquettes", "etiquetas", "schlagwörter", "теги",
             "标签", "टैग", "الوسوم", "وسوم"),
}


def _key(header: str) -> str:
    """A header reduced to what tells spellings apart: lower case, letters and digits, accents dropped."""
    decomposed = unicodedata.normalize("NFKD", header.strip().lower())
    return "".join(ch for ch in decomposed if ch.isalnum() and not unicodedata.combining(ch))


_SPELLING_TO_FIELD = {_key(s): field for field, spellings in HEADER_SPELLINGS.items() for s in spellings}
_SPELLING_TO_FIELD.update({_key(f): f for f in FIELDS})


class CsvFormat(msgspec.Struct, frozen=True, kw_only=True):
    """How a file is written: a Python codec name and a one-character separator."""

    encoding: str
    delimiter: str


def check_encoding(name: str) -> str:
    """The codec for an encoding name a user gave ("windows-1252", "latin1", "utf-16"...)."""
    try:
        return codecs.lookup(name.strip()).name
    except (LookupError, ValueError):
        raise Invalid(f"encoding: unknown encoding {name!r} (e.g. utf-8, utf-16, windows-1252, latin-1)",
                      field="encoding") from None


def check_delimiter(text: str) -> str:
    """The separator a user gave: one of , ; | or a tab (also spelled `tab`, `\\t`, `comma`...)."""
    found = DELIMITER_NAMES.get(text if text in DELIMITER_NAMES else text.strip().lower())
    if found is None:
        raise Invalid("delimiter: expected one of `,` `;` `|` or `tab`", field="delimiter")
    return found


def detect_encoding(sample: bytes) -> str:
    """UTF-8 (BOM or not) and UTF-16/32 by their BOM; otherwise Windows-1252, or Latin-1 for its holes."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        # not final: the sample may end inside a multi-byte character
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        return "latin-1" if _CP1252_HOLES.intersection(sample) else "cp1252"


def detect_delimiter(text: str) -> str:
    """The separator that splits the sample's lines into the same number of fields, the most fields first."""
    lines = text.splitlines()[:50]
    if len(text) >= SAMPLE // 2 and len(lines) > 1:
        lines = lines[:-1]  # the sample may cut its last line short
    best, best_score = ",", (0, 0, 0)
    for rank, delimiter in enumerate(DELIMITERS):
        try:
            rows = [r for r in csv.reader(lines, delimiter=delimiter) if r]
        except csv.Error:
            continue
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        score = (sum(len(r) == width for r in rows), width, -rank)
        if score > best_score:
            best, best_score = delimiter, score
    return best


def sniff(path: Path, *, encoding: str | None = None, delimiter: str | None = None) -> CsvFormat:
    """The file's format: what was given, the rest detected from its first bytes."""
    sample = _read_sample(path)
    if encoding is None:
        encoding = detect_encoding(sample)
    elif encoding == "utf-8" and sample.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"  # the BOM is not part of the first header
    if delimiter is None:
        text = codecs.getincrementaldecoder(encoding)(errors="replace").decode(sample, final=False)
        delimiter = detect_delimiter(text.lstrip("\ufeff"))
    return CsvFormat(encoding=encoding, delimiter=delimiter)


def _read_sample(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(SAMPLE)
    except OSError as exc:  # the stored upload itself; a store's connection error is not this
        raise Invalid(f"upload unreadable: {exc.strerror or exc}", field="file") from exc


def read_records(path: Path, fmt: CsvFormat) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """(first line number, fields, error) per record, header included; memory stays flat whatever the size."""
    # undecodable bytes become U+FFFD so the line is reported, not fatal
    try:
        with open(path, encoding=fmt.encoding, errors="replace", newline="") as f:
            reader = csv.reader(f, delimiter=fmt.delimiter, strict=True)
            while True:
                start = reader.line_num + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield start, None, f"malformed CSV: {exc}"
                    continue
                if fields:  # blank lines carry nothing
                    yield start, fields, None
    except OSError as exc:
        raise Invalid(f"upload unreadable: {exc.strerror or exc}", field="file") from exc


def check_mapping(mapping: dict[str, str]) -> None:
    """Keys are contact fields or `custom.<name>`, values CSV column headers."""
    for key, column in mapping.items():
        if not (key in FIELDS or (key.startswith("custom.") and len(key) > 7)):
            raise Invalid(f"mapping.{key}: expected one of {', '.join(FIELDS)} or custom.<name>", field=f"mapping.{key}")
        if not isinstance(column, str) or not column:
            raise Invalid(f"mapping.{key}: expected a column header", field=f"mapping.{key}")
    if mapping and "email" not in mapping:
        raise Invalid("mapping.email: the mapping must say which column holds the address", field="mapping.email")


def columns(header: list[str], mapping: dict[str, str]) -> dict[str, int]:
    """Field -> column index. Without a mapping, headers spelled like a field map to it, the rest to custom."""
    header = [h.strip().lstrip("\ufeff") for h in header]
    if mapping:
        return _mapped(header, mapping)
    found: dict[str, int] = {}
    custom: dict[str, int] = {}
    # exact field names first, so a file with both `email` and `mail` columns takes `email`
    for exact in (True, False):
        for i, h in enumerate(header):
            field = _SPELLING_TO_FIELD.get(_key(h))
            if field is not None and field not in found and (h.lower() == field) == exact \
                    and i not in found.values():
                found[field] = i
    if "email" not in found:
        raise Invalid("mapping: no email column in the header (e.g. `email`, `e-mail`, `courriel`, `correo`); "
                      "pass a mapping", field="mapping")
    taken = set(found.values())
    for i, h in enumerate(header):
        if h and i not in taken:
            custom[f"custom.{h}"] = i
    return {**found, **custom}


def _mapped(header: list[str], mapping: dict[str, str]) -> dict[str, int]:
    """An explicit mapping: column headers as written, or failing that spelled alike (case, accents)."""
    exact = {h: i for i, h in reversed(list(enumerate(header)))}
    alike = {_key(h): i for i, h in reversed(list(enumerate(header)))}
    where: dict[str, int] = {}
    missing = []
    for field, column in mapping.items():
        i = exact.get(column.strip(), alike.get(_key(column)))
        if i is None:
            missing.append(column)
        else:
            where[field] = i
    if missing:
        raise Invalid(f"mapping: columns not in the header: {', '.join(missing)}", field="mapping")
    return where
