"""`primage import clinical`: a registry or trial export (CSV or XLSX) made FHIR R4B by a
declarative mapping (mappings/*.yaml, see curation/clinical_mapping.py), one transaction
Bundle per patient, sent through the platform's FHIR API so the gateway pseudonymises it.

Rows are grouped by the patient id column. A group is one ledger item: its key is the
mapping's name, the patient's local id and a digest of the group's values (and of the
mapping), so rows sent before are `present` on the next run and changed rows are sent
again; its group is the local id, its locator the row numbers. Row numbers are the
spreadsheet's: the header is row 1.

Every value is checked before anything is sent: a value the mapping has no code for, a date
that does not parse, a missing required value, a number out of range, or a resource the
R4B models refuse fails the patient's item with reasons that name the row and the column,
and the patient is not sent; the other patients are not held up.

A resource whose map names a `profile` claims it in `meta.profile`, so the platform checks it
against that profile on write: a resource that does not conform refuses its patient's
transaction (422) and the platform's reason is reported for that patient.

Each resource is PUT with an id derived from the patient's local id (and, for per-row
resources, the row's identifying columns): sending a patient again updates the same
resources instead of adding copies (the gateway maps a site's ids to the same platform ids
every time), and the entries refer to each other by urn:uuid fullUrls.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from fhir_server import models
from fhir_server.errors import InvalidRequest

from .clinical_mapping import UCUM, Column, Mapping, ResourceMap, element_kinds, normalise
from .ledger import Item, Listed
from .runner import SourceError

MRN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}
MAX_REASONS = 12


class ExportError(SourceError, ValueError):
    """An export that cannot be read with its mapping at all (no row is looked at)."""


@dataclass(frozen=True)
class Problem:
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = [f"row {self.row}"] if self.row is not None else []
        if self.column:
            where.append(f"column {self.column}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


@dataclass(frozen=True)
class Group:
    """One patient's rows and what they become."""

    key: str
    local_id: str | None
    rows: tuple[int, ...]
    bundle: dict[str, Any] | None
    problems: tuple[Problem, ...]

    def listed(self) -> Listed:
        size = len(self.body()) if self.bundle is not None else 0
        return Listed(
            self.key, (self.local_id or "(no patient id)")[:128], _locator(self.rows), size
        )

    def body(self) -> bytes:
        return json.dumps(self.bundle, ensure_ascii=False).encode()

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for entry in (self.bundle or {}).get("entry", []):
            type_ = entry["resource"]["resourceType"]
            out[type_] = out.get(type_, 0) + 1
        return out

    def reason(self) -> str:
        text = "; ".join(str(p) for p in self.problems[:MAX_REASONS])
        more = len(self.problems) - MAX_REASONS
        return f"{text}; and {more} more" if more > 0 else text


Row = tuple[int, dict[str, Any]]  # (spreadsheet row number, column -> cell value)


@dataclass
class ClinicalSource:
    path: Path
    mapping_path: Path
    kind: str = "clinical"
    header: list[str] = field(default_factory=list)

    def spec(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve()), "mapping": str(self.mapping_path.resolve())}

    @cached_property
    def mapping(self) -> Mapping:
        return Mapping.load(self.mapping_path)

    @cached_property
    def groups(self) -> list[Group]:
        header, rows = read_export(self.path, self.mapping)
        self.header = header
        return build_groups(self.mapping, rows)

    def listing(self) -> Iterator[Listed]:
        for group in self.groups:
            yield group.listed()

    def fetch(self, items: Sequence[Item]) -> Iterator[tuple[Item, bytes | str]]:
        by_key = {g.key: g for g in self.groups}
        for item in items:
            group = by_key.get(item.key)
            if group is None:
                yield item, "the export or the mapping changed since this job was planned"
            elif group.bundle is None:
                yield item, group.reason()
            else:
                yield item, group.body()

    def preview(self) -> Iterator[tuple[Any, int]]:
        return iter(())  # DICOM previews only; a clinical dry run reads report()

    def report(self) -> dict[str, Any]:
        """For --dry-run: what would be sent, what would not and why."""
        groups = self.groups
        good = [g for g in groups if g.bundle is not None]
        totals: dict[str, int] = {}
        for group in good:
            for type_, n in group.counts().items():
                totals[type_] = totals.get(type_, 0) + n
        return {
            "file": str(self.path),
            "mapping": self.mapping.name,
            "rows": sum(len(g.rows) for g in groups),
            "patients": len(good),
            "resources": totals,
            "would_import": [
                {"patient": g.local_id, "rows": list(g.rows), "resources": g.counts()} for g in good
            ],
            "not_imported": [
                {
                    "patient": g.local_id,
                    "rows": list(g.rows),
                    "problems": [str(p) for p in g.problems],
                }
                for g in groups
                if g.bundle is None
            ],
            "unmapped_columns": [c for c in self.header if c not in self.mapping.columns()],
        }


# --- reading exports ----------------------------------------------------------------------------


def read_export(path: Path, mapping: Mapping) -> tuple[list[str], list[Row]]:
    """The header and the non-empty rows; ExportError when a mapped column is missing."""
    suffix = path.suffix.lower()
    fmt = "xlsx" if suffix in (".xlsx", ".xlsm") else "csv" if suffix == ".csv" else mapping.format
    try:
        header, rows = _xlsx(path, mapping.sheet) if fmt == "xlsx" else _csv(path, mapping)
    except UnicodeDecodeError:
        raise ExportError(
            f"{path.name}: not {mapping.encoding} text (the mapping's source.encoding)"
        ) from None
    except (OSError, csv.Error) as exc:
        raise ExportError(f"{path.name}: cannot be read ({type(exc).__name__})") from None
    seen: set[str] = set()
    for name in header:
        if name and name in seen:
            raise ExportError(f"{path.name}: column {name!r} appears twice in the header")
        seen.add(name)
    missing = sorted(mapping.columns() - seen)
    if missing:
        raise ExportError(
            f"{path.name}: the mapping {mapping.name} reads columns that the export does not "
            f"have: {', '.join(missing)}"
        )
    return header, rows


def _csv(path: Path, mapping: Mapping) -> tuple[list[str], list[Row]]:
    with path.open(newline="", encoding=mapping.encoding) as f:
        reader = csv.reader(f, delimiter=mapping.delimiter)
        header = [h.strip() for h in next(reader, [])]
        rows = []
        for cells in reader:
            if any(c.strip() for c in cells):
                rows.append((reader.line_num, dict(zip(header, cells, strict=False))))
    return header, rows


def _xlsx(path: Path, sheet: str | None) -> tuple[list[str], list[Row]]:
    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, KeyError, ValueError) as exc:
        raise ExportError(f"{path.name}: not a readable xlsx file ({type(exc).__name__})") from None
    try:
        if sheet is not None and sheet not in book.sheetnames:
            raise ExportError(f"{path.name}: no sheet {sheet!r}")
        cells = (book[sheet] if sheet else book.worksheets[0]).iter_rows(values_only=True)
        header = [_text(h) for h in next(cells, ())]
        rows = []
        for number, values in enumerate(cells, 2):
            if any(_text(v) for v in values):
                rows.append((number, dict(zip(header, values, strict=False))))
    finally:
        book.close()
    return header, rows


def _text(value: Any) -> str:
    """A cell as text: spreadsheets give numbers and dates, CSV gives strings."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        return (
            value.date().isoformat() if value.time() == datetime.min.time() else value.isoformat()
        )
    if isinstance(value, date):
        return value.isoformat()
    return " ".join(str(value).split())


# --- rows to Bundles ---------------------------------------------------------------------------


def build_groups(mapping: Mapping, rows: list[Row]) -> list[Group]:
    """The rows grouped by patient, each made a transaction Bundle or refused with reasons."""
    by_patient: dict[str, list[Row]] = {}
    groups: list[Group] = []
    for number, values in rows:
        local_id = _text(values.get(mapping.patient_column))
        if not local_id:
            problem = Problem(number, mapping.patient_column, "required value missing (patient id)")
            key = _key(mapping, f"row-{number}", [(number, values)])
            groups.append(Group(key, None, (number,), None, (problem,)))
            continue
        by_patient.setdefault(local_id, []).append((number, values))
    for local_id, patient_rows in by_patient.items():
        bundle, problems = _bundle(mapping, local_id, patient_rows)
        groups.append(
            Group(
                _key(mapping, local_id, patient_rows),
                local_id,
                tuple(n for n, _ in patient_rows),
                None if problems else bundle,
                tuple(problems),
            )
        )
    return sorted(groups, key=lambda g: g.rows[0])


def _key(mapping: Mapping, local_id: str, rows: list[Row]) -> str:
    """mapping:local-id:digest of the rows' mapped values (in any order) and the mapping."""
    columns = sorted(mapping.columns())
    content = sorted(json.dumps([_text(v.get(c)) for c in columns]) for _, v in rows)
    digest = hashlib.sha256("\n".join([mapping.digest, *content]).encode()).hexdigest()[:16]
    safe = local_id if len(local_id) <= 40 and local_id.isprintable() else _hash(local_id)[:32]
    return f"{mapping.name}:{safe}:{digest}"


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _id(*parts: str) -> str:
    """A resource id the site chooses (the gateway maps it to the platform's id)."""
    return f"imp-{_hash('|'.join(parts))[:28]}"


@dataclass
class _Made:
    rmap: ResourceMap
    resource: dict[str, Any]
    rows: tuple[int, ...]
    full_url: str = ""


def _bundle(
    mapping: Mapping, local_id: str, rows: list[Row]
) -> tuple[dict[str, Any], list[Problem]]:
    problems: list[Problem] = []
    patient_id = _id(mapping.identifier_system, local_id)
    patient = _per_patient(mapping, mapping.patient, rows, patient_id, problems)
    assert patient is not None  # the patient id column has a value
    identifier = {"use": "usual", "type": MRN, "system": mapping.identifier_system}
    patient.resource["identifier"] = [
        {**identifier, **i} if i.get("system") in (None, mapping.identifier_system) else i
        for i in patient.resource.get("identifier", [])
    ]
    names = patient.resource.get("name") or [{}]
    columns = [c.name for c in mapping.patient.columns if c.element.startswith("name")]
    said = any(p.column in columns for p in problems)  # a required name column, missing
    if not said and not any(n.get("family") or n.get("given") for n in names):
        problems.append(
            Problem(
                rows[0][0],
                None,
                f"the Patient has no name (columns {', '.join(columns)} are empty): "
                "the pseudonymisation gateway needs one",
            )
        )
    made = [patient]
    for rmap in mapping.resources:
        if rmap.per == "patient":
            resource_id = _id(mapping.name, mapping.identifier_system, local_id, rmap.key)
            one = _per_patient(mapping, rmap, rows, resource_id, problems)
            made += [one] if one else []
        else:
            made += _per_row(mapping, rmap, local_id, rows, problems)
    for m in made:
        m.full_url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, m.resource['id'])}"
    by_key: dict[str, list[_Made]] = {}
    for m in made[1:]:
        by_key.setdefault(m.rmap.key, []).append(m)
        m.resource["subject"] = {"reference": patient.full_url}
    for m in made[1:]:
        for element, target in m.rmap.links.items():
            for t in by_key.get(target, []):
                _assign(m.resource, element, {"reference": t.full_url})
    for m in made:
        try:
            models.validate(m.resource)
        except InvalidRequest as exc:
            for issue in exc.issues or []:
                problems.append(Problem(m.rows[0], None, f"{m.rmap.key}: {issue.diagnostics}"))
    entries = [
        {
            "fullUrl": m.full_url,
            "resource": m.resource,
            "request": {"method": "PUT", "url": f"{m.resource['resourceType']}/{m.resource['id']}"},
        }
        for m in made
    ]
    problems.sort(key=lambda p: (p.row or 0, p.column or ""))
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}, problems


def _per_patient(
    mapping: Mapping, rmap: ResourceMap, rows: list[Row], resource_id: str, problems: list[Problem]
) -> _Made | None:
    """One resource from all the patient's rows: a column may repeat a value, not disagree."""
    cells: dict[str, tuple[int, Any]] = {}
    for column in _read_columns(rmap):
        first: tuple[int, Any] | None = None
        for number, values in rows:
            text = _text(values.get(column))
            if not text:
                continue
            if first is None:
                first = (number, values.get(column))
            elif normalise(text) != normalise(_text(first[1])):
                problems.append(
                    Problem(number, column, f"differs from row {first[0]} for the same patient")
                )
        if first is not None:
            cells[column] = first
    if rmap.only_if and not any(c in cells for c in rmap.only_if):
        return None
    resource = _new(rmap, resource_id)
    numbers = sorted({n for n, _ in cells.values()}) or [rows[0][0]]
    filled = set()
    for column in rmap.columns:
        number, raw = cells.get(column.name, (numbers[0], None))
        unit = cells.get(column.unit_column or "", (number, None))[1]
        if _fill(resource, column, raw, unit, number, rmap.resource_type == "Patient", problems):
            filled.add(column.name)
    if rmap.only_if and not filled & set(rmap.only_if):  # e.g. "not done": nothing to say
        return None
    return _Made(rmap, resource, tuple(numbers))


def _per_row(
    mapping: Mapping, rmap: ResourceMap, local_id: str, rows: list[Row], problems: list[Problem]
) -> list[_Made]:
    made: dict[str, _Made] = {}
    id_columns = rmap.id_columns or tuple(c.name for c in rmap.columns)
    for number, values in rows:
        if rmap.only_if and not any(_text(values.get(c)) for c in rmap.only_if):
            continue
        identity = [normalise(_text(values.get(c))) for c in id_columns]
        resource_id = _id(mapping.name, mapping.identifier_system, local_id, rmap.key, *identity)
        resource = _new(rmap, resource_id)
        filled = set()
        for column in rmap.columns:
            unit = values.get(column.unit_column) if column.unit_column else None
            if _fill(resource, column, values.get(column.name), unit, number, False, problems):
                filled.add(column.name)
        if rmap.only_if and not filled & set(rmap.only_if):
            continue
        earlier = made.get(resource_id)
        if earlier is None:
            made[resource_id] = _Made(rmap, resource, (number,))
        elif earlier.resource != resource:
            problems.append(
                Problem(
                    number,
                    None,
                    f"{rmap.key}: same {', '.join(id_columns)} as row {earlier.rows[0]} but "
                    "different values",
                )
            )
    return list(made.values())


def _new(rmap: ResourceMap, resource_id: str) -> dict[str, Any]:
    """A resource of the map: its id, the profiles it claims and its fixed values."""
    resource: dict[str, Any] = {"resourceType": rmap.resource_type, "id": resource_id}
    if rmap.profiles:
        resource["meta"] = {"profile": list(rmap.profiles)}
    return resource | _copy(rmap.fixed)


def _read_columns(rmap: ResourceMap) -> list[str]:
    out = [c.name for c in rmap.columns]
    out += [c.unit_column for c in rmap.columns if c.unit_column and c.unit_column not in out]
    return out


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _fill(
    resource: dict[str, Any],
    column: Column,
    raw: Any,
    unit: Any,
    row: int,
    identifying: bool,
    problems: list[Problem],
) -> bool:
    """Put one cell's value into `resource`; False when it has none (or a problem)."""
    try:
        value = convert(column, raw, unit, identifying)
    except ValueError as exc:
        problems.append(Problem(row, column.name, str(exc)))
        return False
    if value is None:
        if column.required:
            text = _text(raw)
            why = f"no value ({text!r} means none)" if text else "required value missing"
            problems.append(Problem(row, column.name, why))
        return False
    _assign(resource, column.element, value)
    return True


def _assign(resource: dict[str, Any], path: str, value: Any) -> None:
    """Put `value` at `path`; a repeating element gets a list (a second value is appended),
    `extension[url=URL]` the extension with that url (made once)."""
    node = resource
    kinds = element_kinds(resource["resourceType"], path)
    for part, repeats, url in kinds[:-1]:
        if url is not None:
            items = node.setdefault(part, [])
            found = next((i for i in items if i.get("url") == url), None)
            if found is None:
                found = {"url": url}
                items.append(found)
            node = found
        elif repeats:
            items = node.setdefault(part, [])
            if not items:
                items.append({})
            node = items[0]
        else:
            node = node.setdefault(part, {})
    part, repeats, _ = kinds[-1]
    if repeats:
        node.setdefault(part, []).extend(value if isinstance(value, list) else [value])
    else:
        node[part] = value


# --- one cell ----------------------------------------------------------------------------------


def convert(column: Column, raw: Any, unit: Any, identifying: bool = False) -> Any:
    """The FHIR value of one cell, or None when empty; ValueError says what is wrong.

    Values of identifying columns (the Patient's) are not quoted in the reasons."""
    text = _text(raw)
    if not text:
        return None
    shown = "the value" if identifying else repr(text[:40])
    kind = column.type
    if kind in ("code", "CodeableConcept", "boolean"):
        codes = column.codes or {}
        key = normalise(text)
        if key not in codes:
            raise ValueError(f"unknown value {shown}: the mapping has no code for it")
        found = codes[key]
        if found is None:
            return None
        return {"coding": found} if kind == "CodeableConcept" else found
    if kind == "string":
        return text
    if kind == "identifier":
        return {"system": column.system, "value": text} if column.system else {"value": text}
    if kind == "date":
        return _date(column, raw, text, shown)
    if kind == "integer":
        number = _number(text, shown)
        if not float(number).is_integer():
            raise ValueError(f"{shown} is not a whole number")
        return _in_range(column, int(number), shown)
    number = _in_range(column, _number(text, shown), shown)
    if kind == "decimal":
        return number
    # Quantity
    ucum = column.unit
    if column.unit_column:
        unit_text = _text(unit)
        if not unit_text:
            raise ValueError(f"no unit (column {column.unit_column} is empty)")
        ucum = (column.units or {}).get(normalise(unit_text))
        if ucum is None:
            raise ValueError(f"unknown unit {unit_text[:20]!r} in column {column.unit_column}")
    assert ucum is not None
    return {"value": number, "unit": ucum["display"], "system": UCUM, "code": ucum["code"]}


def _date(column: Column, raw: Any, text: str, shown: str) -> str:
    if isinstance(raw, datetime):
        return raw.date().isoformat()
    if isinstance(raw, date):
        return raw.isoformat()
    for fmt in column.formats:
        try:
            parsed = datetime.strptime(text, fmt)
        except ValueError:
            continue
        if "%d" in fmt or "%j" in fmt:
            return parsed.date().isoformat()
        if "%m" in fmt or "%b" in fmt or "%B" in fmt:  # a month: FHIR's partial date
            return f"{parsed.year:04d}-{parsed.month:02d}"
        return f"{parsed.year:04d}"
    raise ValueError(f"{shown} is not a date in the format {' or '.join(column.formats)}")


def _number(text: str, shown: str) -> int | float:
    cleaned = text.replace(",", ".") if "," in text and "." not in text else text
    try:
        number = float(cleaned)
    except ValueError:
        raise ValueError(f"{shown} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{shown} is not a number")
    return int(number) if number.is_integer() and "." not in cleaned else number


def _in_range(column: Column, number: int | float, shown: str) -> int | float:
    low, high = column.minimum, column.maximum
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"{'' if low is None else _plain(low)}..{'' if high is None else _plain(high)}"
        raise ValueError(f"{shown} is out of range ({bounds})")
    return number


def _plain(number: float) -> str:
    return str(int(number)) if number.is_integer() else str(number)


def _locator(rows: Sequence[int]) -> str:
    return "rows " + ",".join(str(n) for n in rows)
