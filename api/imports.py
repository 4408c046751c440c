"""CSV imports: upload (multipart or a raw text/csv stream) to disk, run as a job, follow its progress."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.params import QueryParameter
from python_multipart.multipart import MultipartParser, parse_options_header

from api import audit
from api.deps import Caller, Config, Db, RedisClient, id_param
from engine import csv_files, imports
from engine.csv_files import CsvFormat
from engine.errors import Invalid
from engine.imports import ImportDefaults, ImportView

ImportId = id_param("import")
# A million-row CSV is ~100 MB; the upload streams to disk, so the cap only bounds the disk used.
MAX_UPLOAD = 4 * 1024**3
FORM_FIELD_MAX = 64 * 1024  # a form field (mapping, tags) is small; anything bigger is a mistake


class _Sink:
    """Where upload bytes go: the file on disk, written synchronously in small chunks."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.size += len(data)

    def close(self) -> None:
        self.file.close()


class _Multipart:
    """Streams a multipart body: the `file` part goes to the sink, the other parts are small form fields."""

    def __init__(self, boundary: bytes, sink: _Sink) -> None:
        self.sink = sink
        self.fields: dict[str, str] = {}
        self.saw_file = False
        self._header = b""
        self._value = b""
        self._name: str | None = None
        self._is_file = False
        self._buf = bytearray()
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_header_field": self._field, "on_header_value": self._val,
            "on_header_end": self._header_end, "on_part_data": self._data, "on_part_end": self._end,
        })

    def _begin(self) -> None:
        self._name, self._is_file, self._buf = None, False, bytearray()

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _val(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            _, params = parse_options_header(self._value)
            self._name = params.get(b"name", b"").decode("utf-8", "replace")
            self._is_file = self._name == "file"
        self._header, self._value = b"", b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self.saw_file = True
            self.sink.write(data[start:end])
        elif len(self._buf) + end - start <= FORM_FIELD_MAX:
            self._buf += data[start:end]
        else:
            raise Invalid(f"{self._name}: form field too large", field=self._name)

    def _end(self) -> None:
        if self._name and not self._is_file:
            self.fields[self._name] = self._buf.decode("utf-8", "replace")


def _options(query: dict[str, Any], form: dict[str, str]) -> tuple[int | None, dict[str, str], ImportDefaults,
                                                                  str | None, str | None]:
    """Import options from the query string, overridden by multipart form fields."""
    values = {**{k: v for k, v in query.items() if v is not None}, **form}
    encoding = csv_files.check_encoding(values["encoding"]) if values.get("encoding") else None
    delimiter = csv_files.check_delimiter(values["delimiter"]) if values.get("delimiter") else None
    try:
        tenant_id = int(values["tenant_id"]) if values.get("tenant_id") else None
    except ValueError as exc:
        raise Invalid("tenant_id: expected a whole number", field="tenant_id") from exc
    try:
        mapping = msgspec.json.decode(values.get("mapping") or "{}", type=dict[str, str])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Invalid(f"mapping: expected a JSON object of column headers ({exc})", field="mapping") from exc
    imports.check_mapping(mapping)
    raw: dict[str, Any] = {k: values[k] for k in ("data_source_id", "language", "category") if values.get(k)}
    raw["tags"] = [t.strip() for t in str(values.get("tags") or "").split(",") if t.strip()]
    # strict=False: form fields are text, "3" must become 3; a bad value names its field in the 400
    return tenant_id, mapping, msgspec.convert(raw, ImportDefaults, strict=False), encoding, delimiter


@post("/contacts/import", operation_id="importContacts", summary="Import contacts from a CSV file",
      tags=["imports"], status_code=202, request_max_body_size=MAX_UPLOAD,
      description="Send the file as multipart (part `file`, options as form fields) or as a raw `text/csv` body "
                  "(options in the query). Options: `tenant_id` (the admin must give it), `mapping` (JSON "
                  "object: contact field or custom.<name> -> column header; default: columns named like the "
                  "fields, the others become custom fields), defaults `tags` (comma-separated), `language`, "
                  "`category`, `data_source_id`, `encoding` and `delimiter`. Without a mapping, header names are "
                  "recognised in the usual spellings of several languages (`email`, `E-mail`, `courriel`, "
                  "`correo`; `first name`, `prénom`, `nombre`, `Vorname`...). The encoding is detected unless "
                  "given: UTF-8 with or without BOM, UTF-16/32 with BOM, otherwise Windows-1252 (Latin-1). The "
                  "separator (`,` `;` tab `|`) is detected unless given. Quoted fields may hold newlines. The "
                  "answer shows the encoding and separator used. The import runs in the background: follow it "
                  "at GET /api/v2/imports/{id}.")
async def import_contacts(
    request: Request, caller: Caller, redis: RedisClient, settings: Config,
    tenant_id: Annotated[int | None, QueryParameter(gt=0)] = None,
    mapping: Annotated[str | None, QueryParameter(description="JSON object", examples=[])] = None,
    tags: Annotated[str | None, QueryParameter(description="comma-separated tags for every row")] = None,
    language: Annotated[str | None, QueryParameter()] = None,
    category: Annotated[str | None, QueryParameter()] = None,
    data_source_id: Annotated[int | None, QueryParameter(gt=0)] = None,
    encoding: Annotated[str | None, QueryParameter(
        description="the file's encoding (utf-8, utf-16, windows-1252, latin-1...); default: detected",
        max_length=40)] = None,
    delimiter: Annotated[str | None, QueryParameter(
        description="the separator: `,` `;` `|` or `tab`; default: detected", max_length=10)] = None,
) -> imports.Import:
    query = {"tenant_id": tenant_id, "mapping": mapping, "tags": tags, "language": language, "category": category,
             "data_source_id": data_source_id, "encoding": encoding, "delimiter": delimiter}
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    path = imports.imports_dir(settings.home) / f"{secrets.token_hex(12)}.csv"
    sink = _Sink(path)
    form: dict[str, str] = {}
    try:
        if ctype == b"multipart/form-data":
            reader = _Multipart(params.get(b"boundary", b""), sink)
            async for chunk in request.stream():
                reader.parser.write(chunk)
            reader.parser.finalize()
            if not reader.saw_file:
                raise Invalid("file: the multipart body has no part named `file`", field="file")
            form = reader.fields
        else:
            async for chunk in request.stream():
                sink.write(chunk)
        sink.close()
        if sink.size == 0:
            raise Invalid("file: the upload is empty", field="file")
        chosen, columns, defaults, given_encoding, given_delimiter = _options(query, form)
        if chosen is None and caller.admin:
            raise Invalid("tenant_id: the admin key must say which tenant the import is for", field="tenant_id")
        chosen = caller.scope(chosen if chosen is not None else caller.tenant_id)
        # detected now, from the file's first bytes, so the answer says how the file will be read
        fmt: CsvFormat = csv_files.sniff(path, encoding=given_encoding, delimiter=given_delimiter)
        async with audit.transaction(request) as db:
            created = await imports.create_import(db, chosen, path, sink.size, columns, defaults, fmt)
    except BaseException:
        sink.close()
        path.unlink(missing_ok=True)
        raise
    await redis.enqueue_job("import_contacts", created.id, _queue_name=settings.queue_name)
    return created


@get("/imports/{import_id:int}", operation_id="getImport", summary="An import's progress", tags=["imports"],
     description="Rows read, created, updated, unchanged and rejected so far, and the rejected rows with their line "
                 "numbers and reasons (page with `after_line`).")
async def get_import(import_id: ImportId, db: Db, caller: Caller,
                     after_line: Annotated[int, QueryParameter(ge=0)] = 0) -> ImportView:
    return await imports.get_import(db, import_id, None if caller.admin else caller.tenant_id, after_line=after_line)


ROUTES = [import_contacts, get_import]
