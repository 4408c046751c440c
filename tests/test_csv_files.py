"""Reading CSV files as scrapers write them: encodings, separators, header spellings, explicit mappings."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from engine import csv_files
from engine.csv_files import CsvFormat
from engine.errors import Invalid

ROWS = [["Email", "Prénom", "Société"], ["zoé@example.fr", "Zoé", "Café Müller; Söhne"],
        ["jörg@example.de", "Jörg", "Straße, GmbH"]]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def as_text(rows: list[list[str]], delimiter: str) -> str:
    def cell(value: str) -> str:
        return f'"{value}"' if delimiter in value or "," in value or ";" in value else value

    return "".join(delimiter.join(cell(v) for v in row) + "\r\n" for row in rows)


@pytest.mark.parametrize(("data", "encoding"), [
    (codecs.BOM_UTF8 + as_text(ROWS, ",").encode(), "utf-8-sig"),
    (as_text(ROWS, ",").encode(), "utf-8"),
    (codecs.BOM_UTF16_LE + as_text(ROWS, ",").encode("utf-16-le"), "utf-16"),
    (codecs.BOM_UTF16_BE + as_text(ROWS, ",").encode("utf-16-be"), "utf-16"),
    (as_text(ROWS, ",").replace("Söhne", "Söhne – “Ltd”").encode("cp1252"), "cp1252"),
    (as_text(ROWS, ",").encode("latin-1") + b"\x81", "latin-1"),  # 0x81 does not exist in Windows-1252
])
def test_encodings_are_detected_and_read_back_to_the_same_text(tmp_path, data, encoding) -> None:
    path = write(tmp_path / "f.csv", data)
    fmt = csv_files.sniff(path)
    assert fmt == CsvFormat(encoding=encoding, delimiter=",")
    records = list(csv_files.read_records(path, fmt))
    assert records[0] == (1, ["Email", "Prénom", "Société"], None)  # no BOM left in the first header
    assert records[1][1][:2] == ["zoé@example.fr", "Zoé"]
    assert records[2][1] == ["jörg@example.de", "Jörg", "Straße, GmbH"]


def test_a_utf8_sample_cut_inside_a_character_is_still_utf8() -> None:
    text = ("email\n" + "é" * 40).encode()
    assert csv_files.detect_encoding(text[:-1]) == "utf-8"


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_separators_are_detected(tmp_path, delimiter) -> None:
    path = write(tmp_path / "f.csv", as_text(ROWS, delimiter).encode())
    fmt = csv_files.sniff(path)
    assert fmt.delimiter == delimiter
    assert [r[1] for r in csv_files.read_records(path, fmt)][1:] == ROWS[1:]


def test_a_given_encoding_and_separator_win_over_detection(tmp_path) -> None:
    # cp1252 bytes that happen to decode as latin-1 too; the caller says which, and says `;`
    path = write(tmp_path / "f.csv", "email;nom\r\na@example.fr;Œuvre\r\n".encode("cp1252"))
    fmt = csv_files.sniff(path, encoding=csv_files.check_encoding("Windows-1252"),
                          delimiter=csv_files.check_delimiter("semicolon"))
    assert fmt == CsvFormat(encoding="cp1252", delimiter=";")
    assert list(csv_files.read_records(path, fmt))[1][1] == ["a@example.fr", "Œuvre"]
    assert csv_files.check_delimiter("tab") == csv_files.check_delimiter("\t") == "\t"


def test_bad_encoding_and_separator_names_are_refused_by_field() -> None:
    with pytest.raises(Invalid) as exc:
        csv_files.check_encoding("klingon-8")
    assert exc.value.field == "encoding"
    with pytest.raises(Invalid) as exc:
        csv_files.check_delimiter("::")
    assert exc.value.field == "delimiter"


@pytest.mark.parametrize(("header", "expected"), [
    (["email", "first_name", "last_name", "company"], ["email", "first_name", "last_name", "company"]),
    (["E-Mail", "First Name", "Last Name", "Company Name"], ["email", "first_name", "last_name", "company"]),
    (["Courriel", "Prénom", "Nom", "Société", "Pays", "Langue"],
     ["email", "first_name", "last_name", "company", "country", "language"]),
    (["Correo electrónico", "Nombre", "Apellidos", "Empresa", "Sitio web", "Categoría"],
     ["email", "first_name", "last_name", "company", "website", "category"]),
    (["E-Mail-Adresse", "Vorname", "Nachname", "Firma", "Webseite"],
     ["email", "first_name", "last_name", "company", "website"]),
    (["Endereço de e-mail", "Nome", "Sobrenome", "Empresa", "País"],
     ["email", "first_name", "last_name", "company", "country"]),
    (["Электронная почта", "Имя", "Фамилия", "Компания"], ["email", "first_name", "last_name", "company"]),
    (["电子邮件", "名字", "姓氏", "公司", "标签"], ["email", "first_name", "last_name", "company", "tags"]),
    (["ईमेल", "पहला नाम", "उपनाम", "कंपनी"], ["email", "first_name", "last_name", "company"]),
    (["البريد الإلكتروني", "الاسم الأول", "اسم العائلة", "الشركة"],
     ["email", "first_name", "last_name", "company"]),
])
def test_header_spellings_in_the_engines_languages_map_to_fields(header, expected) -> None:
    columns = csv_files.columns(header, {})
    assert [f for f, _ in sorted(((f, i) for f, i in columns.items()), key=lambda x: x[1])] == expected


def test_unknown_headers_become_custom_fields_and_the_exact_field_name_wins() -> None:
    columns = csv_files.columns(["Mail", "email", "SIRET", "Name", ""], {})
    assert columns == {"email": 1, "custom.Mail": 0, "custom.SIRET": 2, "custom.Name": 3}


def test_a_header_without_an_email_column_needs_a_mapping() -> None:
    with pytest.raises(Invalid) as exc:
        csv_files.columns(["name", "phone"], {})
    assert exc.value.field == "mapping"


def test_an_explicit_mapping_matches_headers_as_written_or_spelled_alike() -> None:
    header = ["Adresse", "Prénom du contact", "Note"]
    assert csv_files.columns(header, {"email": "Adresse", "first_name": "prenom du contact",
                                      "custom.note": "NOTE"}) == {"email": 0, "first_name": 1, "custom.note": 2}
    with pytest.raises(Invalid) as exc:
        csv_files.columns(header, {"email": "Courriel"})
    assert exc.value.field == "mapping" and "Courriel" in exc.value.message
