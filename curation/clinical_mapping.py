"""The mapping files of `primage import clinical` (mappings/*.yaml): one loader, checked
when it is read, so a mistake in a mapping stops the import before any row is looked at.

A mapping names the export's patient id column, the Patient's columns and, per resource
(Condition, Observation, ...), the columns that fill its elements. mappings/README.md
documents the format; in short, each column has

    element   where the value goes, a path in the resource (`valueQuantity`, `name.family`);
              repeating elements are found from the fhir.resources R4B models, so `bodySite`
              gets a list and a second column into `name.given` adds a second given name;
              `extension[url=URL].value...` is the resource's extension with that url
    type      string | code | CodeableConcept | date | integer | decimal | Quantity |
              boolean | identifier (inferred: `format` -> date, `unit` -> Quantity, a map
              of codings or a ConceptMap -> CodeableConcept, a map of strings -> code)
    map       the export's values -> codes, matched without regard to case or repeated
              spaces; a value mapped to null means "no value" (e.g. "not done")
    conceptmap  a FHIR ConceptMap JSON file next to the mapping, instead of `map`
    format    strptime date format(s); spreadsheet date cells are taken as they are
    min, max  the accepted range of a number
    unit      a UCUM unit {code, display}; or `unit_column` with `units` (local -> UCUM)
    required  a row without a value fails

A value the mapping does not know is an error, never passed through: an import sends
codes, not the registry's local labels.

Per resource (and for the patient), `profile` names the StructureDefinition canonical(s)
the resource claims in `meta.profile`: the platform checks every write that claims a profile
it knows, and refuses the patient's transaction (422, the reason reported per patient) when
a resource does not conform.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from fhir.resources.R4B import get_fhir_model_class

from fhir_server import models
from fhir_server.errors import InvalidRequest

from .runner import SourceError

UCUM = "http://unitsofmeasure.org"
TYPES = (
    "string",
    "code",
    "CodeableConcept",
    "date",
    "integer",
    "decimal",
    "Quantity",
    "boolean",
    "identifier",
)
_COLUMN_KEYS = {
    "element",
    "type",
    "map",
    "conceptmap",
    "system",
    "format",
    "min",
    "max",
    "unit",
    "unit_column",
    "units",
    "required",
}
_RESOURCE_KEYS = {
    "resourceType",
    "profile",
    "fixed",
    "columns",
    "only_if",
    "per",
    "id_columns",
    "links",
}
_REFUSED_EQUIVALENCE = {"unmatched", "disjoint"}


class MappingError(SourceError, ValueError):
    """A mapping file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class Column:
    name: str  # the export's column header
    element: str  # path in the resource
    type: str
    required: bool = False
    formats: tuple[str, ...] = ()
    codes: dict[str, Any] | None = None  # normalised export value -> code, coding(s) or None
    minimum: float | None = None
    maximum: float | None = None
    unit: dict[str, str] | None = None
    unit_column: str | None = None
    units: dict[str, dict[str, str]] | None = None  # normalised local unit -> UCUM
    system: str | None = None  # identifier / default coding system


@dataclass(frozen=True)
class ResourceMap:
    key: str  # the mapping's name for it: "diagnosis", "inrg_stage"
    resource_type: str
    columns: tuple[Column, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    only_if: tuple[str, ...] = ()  # made only where one of these columns has a value
    per: str = "patient"  # patient: one per patient; row: one per row
    id_columns: tuple[str, ...] = ()  # per row: what tells one row's resource from another
    links: dict[str, str] = field(default_factory=dict)  # element -> another resource's key
    profiles: tuple[str, ...] = ()  # canonicals claimed in meta.profile


@dataclass(frozen=True)
class Mapping:
    name: str
    path: Path
    digest: str  # of the mapping and its ConceptMaps: a changed mapping sends rows again
    patient_column: str
    identifier_system: str
    patient: ResourceMap
    resources: tuple[ResourceMap, ...]
    format: str | None = None  # csv | xlsx, when the export's name does not say (.csv, .xlsx)
    delimiter: str = ","
    encoding: str = "utf-8-sig"
    sheet: str | None = None

    def columns(self) -> set[str]:
        """Every export column the mapping reads."""
        out = {self.patient_column}
        for resource in (self.patient, *self.resources):
            for column in resource.columns:
                out.add(column.name)
                if column.unit_column:
                    out.add(column.unit_column)
        return out

    def resource_types(self) -> list[str]:
        return sorted({"Patient", *(r.resource_type for r in self.resources)})

    @classmethod
    def load(cls, path: Path) -> Mapping:
        return _load(Path(path).resolve())


def normalise(value: str) -> str:
    """How export values are matched against a map: case and repeated spaces do not count."""
    return " ".join(value.split()).casefold()


def _load(path: Path) -> Mapping:
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MappingError(f"{path.name}: cannot be read ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise MappingError(f"{path.name}: a mapping is a YAML mapping")
    where = path.name
    digest = hashlib.sha256(text.encode())
    systems = _dict(raw.get("systems") or {}, f"{where}: systems")
    loader = _Loader(path, systems, digest)
    name = _text(raw.get("name"), f"{where}: name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}", name):
        raise MappingError(f"{where}: name must be letters, digits, '.', '_' or '-' (<= 48)")
    source = _dict(raw.get("source") or {}, f"{where}: source")
    fmt = source.get("format")
    if fmt not in (None, "csv", "xlsx"):
        raise MappingError(f"{where}: source.format is csv or xlsx")
    patient_raw = _dict(raw.get("patient"), f"{where}: patient")
    patient_column = _text(patient_raw.get("id"), f"{where}: patient.id (the patient id column)")
    identifier_system = loader.system(
        _text(patient_raw.get("identifier_system"), f"{where}: patient.identifier_system")
    )
    patient = loader.resource(
        "patient", {**patient_raw, "resourceType": "Patient"}, skip={"id", "identifier_system"}
    )
    elements = {_EXTENSION_SPLIT.split(c.element)[0] for c in patient.columns}
    if "identifier" not in elements or "name" not in elements:
        raise MappingError(
            f"{where}: patient needs an identifier column and name columns: the "
            "pseudonymisation gateway takes a Patient's identity from them"
        )
    resources_raw = _dict(raw.get("resources") or {}, f"{where}: resources")
    resources = tuple(loader.resource(str(k), v) for k, v in resources_raw.items())
    keys = {r.key for r in resources}
    for resource in resources:
        for element, target in resource.links.items():
            if target not in keys or target == resource.key:
                raise MappingError(
                    f"{where}: resources.{resource.key}.links.{element}: no resource {target!r}"
                )
    return Mapping(
        name=name,
        path=path,
        digest=loader.digest.hexdigest(),
        patient_column=patient_column,
        identifier_system=identifier_system,
        patient=patient,
        resources=resources,
        format=fmt,
        delimiter=str(source.get("delimiter", ",")),
        encoding=str(source.get("encoding", "utf-8-sig")),
        sheet=source.get("sheet"),
    )


class _Loader:
    def __init__(self, path: Path, systems: dict[str, Any], digest: Any) -> None:
        self.path = path
        self.systems = {str(k): str(v) for k, v in systems.items()}
        self.digest = digest

    def system(self, name: str) -> str:
        return self.systems.get(name, name)

    def resource(
        self, key: str, raw: Any, skip: frozenset[str] | set[str] = frozenset()
    ) -> ResourceMap:
        where = (
            f"{self.path.name}: resources.{key}"
            if key != "patient"
            else f"{self.path.name}: patient"
        )
        raw = _dict(raw, where)
        unknown = set(raw) - _RESOURCE_KEYS - set(skip)
        if unknown:
            raise MappingError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        type_ = _text(raw.get("resourceType"), f"{where}: resourceType")
        if not models.is_resource_type(type_):
            raise MappingError(f"{where}: {type_!r} is not an R4B resource type")
        fixed = _dict(raw.get("fixed") or {}, f"{where}: fixed")
        if "meta" in fixed:
            raise MappingError(f"{where}: fixed.meta: name profiles with `profile`")
        profile = raw.get("profile") or ()
        profiles = [profile] if isinstance(profile, str) else profile
        if not isinstance(profiles, list | tuple):
            raise MappingError(f"{where}: profile is a canonical URL or a list of them")
        for url in profiles:
            if not isinstance(url, str) or not re.fullmatch(r"https?://\S+", url):
                raise MappingError(f"{where}: profile {str(url)[:80]!r} is not a canonical URL")
        columns_raw = _dict(raw.get("columns"), f"{where}: columns")
        columns = tuple(
            self.column(str(name), spec, type_, f"{where}.columns.{name}")
            for name, spec in columns_raw.items()
        )
        if not columns:
            raise MappingError(f"{where}: no columns")
        per = raw.get("per", "patient")
        if per not in ("patient", "row"):
            raise MappingError(f"{where}: per is patient or row")
        only_if = _names(raw.get("only_if"), f"{where}: only_if")
        id_columns = _names(raw.get("id_columns"), f"{where}: id_columns")
        names = {c.name for c in columns}
        for name in (*only_if, *id_columns):
            if name not in names:
                raise MappingError(f"{where}: {name!r} is not one of its columns")
        links = {
            str(k): str(v) for k, v in _dict(raw.get("links") or {}, f"{where}: links").items()
        }
        for element in links:
            _path_kinds(type_, element, f"{where}.links")
        if type_ != "Patient":
            _path_kinds(type_, "subject", where)  # every resource here is about its patient
        return ResourceMap(
            key=key,
            resource_type=type_,
            columns=columns,
            fixed=fixed,
            only_if=only_if,
            per=per,
            id_columns=id_columns,
            links=links,
            profiles=tuple(profiles),
        )

    def column(self, name: str, raw: Any, resource_type: str, where: str) -> Column:
        raw = _dict(raw, where)
        unknown = set(raw) - _COLUMN_KEYS
        if unknown:
            raise MappingError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        element = _text(raw.get("element"), f"{where}: element")
        _path_kinds(resource_type, element, where)
        system = self.system(str(raw["system"])) if raw.get("system") else None
        codes = None
        if "map" in raw and "conceptmap" in raw:
            raise MappingError(f"{where}: map or conceptmap, not both")
        if "map" in raw:
            codes = {
                normalise(str(k)): self.code(v, system, f"{where}.map.{k}")
                for k, v in _dict(raw["map"], f"{where}: map").items()
            }
        elif "conceptmap" in raw:
            codes = self.conceptmap(_text(raw["conceptmap"], f"{where}: conceptmap"), where)
        formats = raw.get("format") or ()
        formats = (formats,) if isinstance(formats, str) else tuple(str(f) for f in formats)
        units = None
        if raw.get("units") is not None:
            units = {
                normalise(str(k)): self.unit(v, f"{where}.units.{k}")
                for k, v in _dict(raw["units"], f"{where}: units").items()
            }
        type_ = raw.get("type") or _infer(raw, codes)
        if type_ not in TYPES:
            raise MappingError(f"{where}: type {type_!r} is not one of {', '.join(TYPES)}")
        if type_ in ("code", "CodeableConcept", "boolean") and codes is None:
            raise MappingError(f"{where}: a {type_} column needs a map or a conceptmap")
        if type_ == "code" and any(
            v is not None and not isinstance(v, str) for v in (codes or {}).values()
        ):
            raise MappingError(f"{where}: a code column maps to strings")
        if type_ == "CodeableConcept" and codes is not None:
            codes = {k: _codings(v, system, where) for k, v in codes.items()}
        if type_ == "boolean" and any(v not in (True, False, None) for v in (codes or {}).values()):
            raise MappingError(f"{where}: a boolean column maps to true or false")
        if type_ == "date" and not formats:
            raise MappingError(f"{where}: a date column needs a format (e.g. '%d/%m/%Y')")
        no_unit = raw.get("unit") is None and (raw.get("unit_column") is None or units is None)
        if type_ == "Quantity" and no_unit:
            raise MappingError(f"{where}: a Quantity needs a unit, or unit_column and units")
        return Column(
            name=name,
            element=element,
            type=type_,
            required=bool(raw.get("required", False)),
            formats=formats,
            codes=codes,
            minimum=_number(raw.get("min"), f"{where}: min"),
            maximum=_number(raw.get("max"), f"{where}: max"),
            unit=self.unit(raw["unit"], f"{where}.unit") if raw.get("unit") is not None else None,
            unit_column=raw.get("unit_column"),
            units=units,
            system=system,
        )

    def code(self, value: Any, system: str | None, where: str) -> Any:
        if isinstance(value, dict) and "system" in value:
            return {**value, "system": self.system(str(value["system"]))}
        if isinstance(value, list):
            return [self.code(v, system, where) for v in value]
        return value

    def unit(self, value: Any, where: str) -> dict[str, str]:
        if isinstance(value, str):
            return {"code": value, "display": value}
        value = _dict(value, where)
        code = _text(value.get("code"), f"{where}: code (UCUM)")
        return {"code": code, "display": str(value.get("display", code))}

    def conceptmap(self, relative: str, where: str) -> dict[str, Any]:
        """A ConceptMap's source codes -> target codings (validated as an R4B ConceptMap)."""
        file = (self.path.parent / relative).resolve()
        if not file.is_relative_to(self.path.parent):
            raise MappingError(f"{where}: the ConceptMap must be next to the mapping file")
        try:
            text = file.read_text(encoding="utf-8")
            document = json.loads(text)
            models.validate(document, "ConceptMap")
        except (OSError, ValueError) as exc:
            raise MappingError(f"{where}: {relative}: {_why(exc)}") from None
        except InvalidRequest as exc:
            detail = exc.issues[0].diagnostics if exc.issues else exc.diagnostics
            raise MappingError(f"{where}: {relative}: {detail}") from None
        self.digest.update(text.encode())
        out: dict[str, Any] = {}
        for group in document.get("group") or []:
            target_system = group.get("target")
            for element in group.get("element") or []:
                codings = [
                    {
                        k: v
                        for k, v in {
                            "system": target_system,
                            "code": target.get("code"),
                            "display": target.get("display"),
                        }.items()
                        if v
                    }
                    for target in element.get("target") or []
                    if target.get("equivalence") not in _REFUSED_EQUIVALENCE and target.get("code")
                ]
                if element.get("code") and codings:
                    out.setdefault(normalise(element["code"]), []).extend(codings)
        if not out:
            raise MappingError(f"{where}: {relative} maps nothing")
        return out


def _infer(raw: dict[str, Any], codes: dict[str, Any] | None) -> str:
    if raw.get("format"):
        return "date"
    if raw.get("unit") is not None or raw.get("unit_column"):
        return "Quantity"
    if "conceptmap" in raw:
        return "CodeableConcept"
    if codes is not None:
        values = [v for v in codes.values() if v is not None]
        if values and all(isinstance(v, bool) for v in values):
            return "boolean"
        if values and all(isinstance(v, str) for v in values):
            return "code"
        return "CodeableConcept"
    return "string"


def _codings(value: Any, system: str | None, where: str) -> list[dict[str, str]] | None:
    """A map value as a list of codings: "9500/3" (with the column's system), a coding, a list."""
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        coding = {"code": item} if isinstance(item, str | int) else item
        if not isinstance(coding, dict) or not coding.get("code"):
            raise MappingError(f"{where}: a map value is a code or {{system, code, display}}")
        coding = {"system": system, **{k: str(v) for k, v in coding.items()}}
        if not coding.get("system"):
            raise MappingError(f"{where}: code {coding['code']} has no system")
        out.append({k: coding[k] for k in ("system", "code", "display") if coding.get(k)})
    return out


# --- element paths, checked against the fhir.resources R4B models -----------------------------


@cache
def _fields(model_name: str) -> dict[str, tuple[bool, str | None]]:
    """A model's elements by their JSON name: (repeats, the model of its value or None)."""
    model = get_fhir_model_class(model_name)
    out: dict[str, tuple[bool, str | None]] = {}
    for name, info in model.model_fields.items():
        text = str(info.annotation)
        child = re.search(r"abc\.(\w+)Type\b", text)
        out[info.alias or name] = ("List[" in text, child.group(1) if child else None)
    return out


def _path_kinds(resource_type: str, path: str, where: str) -> list[tuple[str, bool, str | None]]:
    """[(element, repeats, extension url)] along `path`; MappingError when the model has no
    such element. `extension[url=URL]` (or `modifierExtension[url=...]`) is the extension
    with that url: `extension[url=https://.../primage-radiotherapy-fractions].valuePositiveInt`.
    """
    model: str | None = resource_type
    out = []
    for part in _EXTENSION_SPLIT.split(path):
        found = _EXTENSION_PART.fullmatch(part)
        name, url = (found.group(1), found.group(2)) if found else (part, None)
        fields = _fields(model) if model else {}
        if name not in fields:
            raise MappingError(f"{where}: {resource_type} has no element {path}")
        repeats, model = fields[name]
        if url is not None and (model != "Extension" or not re.fullmatch(r"\S+:\S+", url)):
            raise MappingError(f"{where}: {name}[url=...] is an extension with a URL")
        out.append((name, repeats, url))
    return out


_EXTENSION_SPLIT = re.compile(r"\.(?![^\[]*\])")  # dots outside [url=...]
_EXTENSION_PART = re.compile(r"(\w+)\[url=([^\]]+)\]")


def element_kinds(resource_type: str, path: str) -> list[tuple[str, bool, str | None]]:
    return _path_kinds(resource_type, path, path)


# --- small checks --------------------------------------------------------------------------------


def _dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MappingError(f"{where} must be a mapping")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MappingError(f"{where} is required")
    return value.strip()


def _names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MappingError(f"{where} is a column name or a list of them")
    return tuple(value)


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MappingError(f"{where} must be a number")
    return float(value)


def _why(exc: Exception) -> str:
    return (
        "not found" if isinstance(exc, FileNotFoundError) else f"unreadable ({type(exc).__name__})"
    )
