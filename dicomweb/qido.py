"""QIDO-RS (PS3.18 10.6): query parameters compiled to SQL over the index tables.

Matchers are named after PS3.4 C.2.2.2: single value, list of UIDs, universal, wildcard,
range; plus fuzzy semantic matching of person names. Nothing here reads a DICOM file:
attributes outside the index columns come from the stored metadata of one instance of
the study or series, and extended query tags from `dicom_tag`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import orjson
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, Connection, and_, func, or_, select

from .errors import BadRequest
from .instance import name_key
from .schema import dicom_instance, dicom_series, dicom_study, dicom_tag
from .store import visible

Level = Literal["study", "series", "instance"]
LEVELS: tuple[Level, ...] = ("study", "series", "instance")
TRUNCATED = (
    "The number of results exceeded the maximum supported by the server. "
    "Additional results can be requested."
)


@dataclass(frozen=True, slots=True)
class Attr:
    level: Level
    column: Any  # None: computed (counts), matched specially or not matchable
    vr: str
    key: Any = None  # normalised column for person names


def _attrs() -> dict[str, Attr]:
    st, se, it = dicom_study.c, dicom_series.c, dicom_instance.c
    return {
        "StudyInstanceUID": Attr("study", st.study_uid, "UI"),
        "PatientID": Attr("study", st.patient_id, "LO"),
        "PatientName": Attr("study", st.patient_name, "PN", st.patient_name_key),
        "PatientBirthDate": Attr("study", st.patient_birth_date, "DA"),
        "PatientSex": Attr("study", st.patient_sex, "CS"),
        "StudyDate": Attr("study", st.study_date, "DA"),
        "StudyTime": Attr("study", st.study_time, "TM"),
        "AccessionNumber": Attr("study", st.accession_number, "SH"),
        "StudyID": Attr("study", st.study_id, "SH"),
        "ReferringPhysicianName": Attr(
            "study", st.referring_physician_name, "PN", st.referring_physician_key
        ),
        "StudyDescription": Attr("study", st.study_description, "LO"),
        "ModalitiesInStudy": Attr("study", st.modalities, "CS"),
        "NumberOfStudyRelatedSeries": Attr("study", st.num_series, "IS"),
        "NumberOfStudyRelatedInstances": Attr("study", st.num_instances, "IS"),
        "SeriesInstanceUID": Attr("series", se.series_uid, "UI"),
        "Modality": Attr("series", se.modality, "CS"),
        "SeriesNumber": Attr("series", se.series_number, "IS"),
        "SeriesDescription": Attr("series", se.series_description, "LO"),
        "BodyPartExamined": Attr("series", se.body_part, "CS"),
        "PerformedProcedureStepStartDate": Attr("series", se.pps_start_date, "DA"),
        "PerformedProcedureStepStartTime": Attr("series", se.pps_start_time, "TM"),
        "NumberOfSeriesRelatedInstances": Attr("series", se.num_instances, "IS"),
        "SOPInstanceUID": Attr("instance", it.sop_uid, "UI"),
        "SOPClassUID": Attr("instance", it.sop_class_uid, "UI"),
        "InstanceNumber": Attr("instance", it.instance_number, "IS"),
        "Rows": Attr("instance", it.rows, "US"),
        "Columns": Attr("instance", it.columns, "US"),
        "BitsAllocated": Attr("instance", it.bits_allocated, "US"),
        "NumberOfFrames": Attr("instance", it.number_of_frames, "IS"),
        "AvailableTransferSyntaxUID": Attr("instance", it.transfer_syntax, "UI"),
    }


ATTRS = _attrs()
DEFAULTS: dict[Level, tuple[str, ...]] = {
    "study": (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "series": (
        "StudyInstanceUID",
        "Modality",
        "SeriesDescription",
        "SeriesNumber",
        "SeriesInstanceUID",
        "BodyPartExamined",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "NumberOfSeriesRelatedInstances",
    ),
    "instance": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
        "AvailableTransferSyntaxUID",
    ),
}
PK_OF: dict[Level, Any] = {
    "study": dicom_study.c.pk,
    "series": dicom_series.c.pk,
    "instance": dicom_instance.c.pk,
}


LABELLED = {name: attr.column.label(name) for name, attr in ATTRS.items()}


@lru_cache(maxsize=4096)
def keyword(name: str) -> str:
    """A query key (keyword or GGGGEEEE tag) as its keyword; 400 if DICOM has no such one."""
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        found = keyword_for_tag(int(name, 16))
    else:
        found = name if tag_for_keyword(name) is not None else ""
    if not found:
        raise BadRequest(f"Unknown attribute {name[:64]!r}")
    return found


@lru_cache(maxsize=4096)
def tag_hex(kw: str) -> str:
    return f"{tag_for_keyword(kw):08X}"


# --- matchers (PS3.4 C.2.2.2) ---------------------------------------------------------------


def single_value(column: Any, value: str) -> ColumnElement[bool]:
    return column == value


def uid_list(column: Any, value: str) -> ColumnElement[bool]:
    uids = [u for u in value.replace(",", "\\").split("\\") if u]
    return column.in_(uids)


def wildcard(column: Any, value: str) -> ColumnElement[bool]:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(escaped.replace("*", "%").replace("?", "_"), escape="\\")


def range_(column: Any, value: str, vr: str) -> ColumnElement[bool]:
    """Inclusive range; an upper time bound covers its whole minute or hour (1530: 153059.9)."""
    low, _, high = value.partition("-")
    clauses = []
    if low:
        clauses.append(column >= low)
    if high:
        clauses.append(column <= (high.ljust(6, "9") if vr == "TM" else high))
    return and_(*clauses)


def fuzzy_person_name(key: Any, value: str) -> ColumnElement[bool]:
    """Any name component starts with each given word, ignoring case (PS3.4 C.2.2.2.1.3)."""
    words = (name_key(value.replace("*", " ")) or "").split()
    clauses = [or_(key.like(f"{w}%"), key.like(f"% {w}%")) for w in words]
    return and_(*clauses)


def _value_clause(attr: Attr, value: str, fuzzy: bool) -> ColumnElement[bool]:
    column = attr.column
    if attr.vr == "UI":
        return uid_list(column, value)
    if attr.vr in ("DA", "TM", "DT") and "-" in value:
        return range_(column, value, attr.vr)
    if attr.vr == "PN":
        if fuzzy:
            return fuzzy_person_name(attr.key, value)
        pattern = (name_key(value.replace("*", "\x00").replace("?", "\x01")) or "").replace(
            "\x00", "*"
        )
        pattern = pattern.replace("\x01", "?")
        if "*" in value or "?" in value:
            return wildcard(attr.key, pattern)
        return single_value(attr.key, pattern)
    if attr.vr in ("IS", "US"):
        try:
            return single_value(column, str(int(value)))
        except ValueError:
            raise BadRequest(f"Not a number: {value[:32]!r}") from None
    if "*" in value or "?" in value:
        return wildcard(column, value)
    return single_value(column, value)


# --- queries -------------------------------------------------------------------------------


@dataclass
class Query:
    level: Level
    match: list[tuple[str, str]] = field(default_factory=list)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    ignored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def parse(level: Level, params: Iterable[tuple[str, str]], extra_tags: Sequence[str] = ()) -> Query:
    query = Query(level)
    for name, value in params:
        if name == "includefield":
            for item in value.split(","):
                item = item.strip()
                if item == "all":
                    query.include_all = True
                elif item:
                    query.include.add(keyword(item))
        elif name == "fuzzymatching":
            query.fuzzy = value.lower() == "true"
        elif name == "emptyvaluematching":  # PS3.18 8.3.4.5: optional; not supported here
            if value.lower() == "true":
                query.warnings.append(
                    "The emptyvaluematching parameter is not supported. "
                    "Empty Value Matching has not been performed."
                )
        elif name in ("limit", "offset"):
            if not value.isdigit():
                raise BadRequest(f"{name} must be a non-negative integer")
            setattr(query, name, int(value))
        else:
            kw = keyword(name)
            attr = ATTRS.get(kw)
            if attr is None and kw not in extra_tags:
                query.ignored.append(kw)
            elif attr is not None and LEVELS.index(attr.level) > LEVELS.index(level):
                raise BadRequest(f"{kw} is not a {level}-level attribute")
            else:
                query.match.append((kw, value))
    return query


def run(
    conn: Connection,
    query: Query,
    scope: Mapping[str, str],
    max_results: int,
    site: str | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Matches as DICOM JSON objects, and whether the server's maximum cut the results."""
    level = query.level
    clauses: list[ColumnElement[bool]] = list(visible(site))
    for kw, value in [*scope.items(), *query.match]:
        if value == "":
            continue  # universal matching: returned, not constrained
        clauses.append(_clause(level, kw, value, query.fuzzy))
    wanted = query.limit if query.limit is not None else max_results
    capped = min(wanted, max_results)
    names = _returned(query)
    statement = _base_select(level, tuple(n for n in names if n in ATTRS))
    rows = conn.execute(statement.where(*clauses).offset(query.offset).limit(capped + 1)).all()
    cut = len(rows) > capped and wanted >= max_results
    rows = rows[:capped]
    extra = [n for n in names if n not in ATTRS] if rows else []
    looked_up = _from_metadata(conn, level, [r._pk for r in rows], extra) if extra else {}
    out = []
    for row in rows:
        mapping = row._mapping
        document: dict[str, Any] = {}
        for name in names:
            if name in ATTRS:
                document[tag_hex(name)] = _element(ATTRS[name].vr, mapping[name])
            elif name in looked_up.get(row._pk, {}):
                document[tag_hex(name)] = looked_up[row._pk][name]
        out.append(document)
    return out, cut


@lru_cache(maxsize=256)
def _base_select(level: Level, names: tuple[str, ...]) -> Any:
    """SELECT pk, the returned columns FROM the level's join, in pk order (built once)."""
    source: Any = dicom_study
    if level in ("series", "instance"):
        source = source.join(dicom_series, dicom_series.c.study_pk == dicom_study.c.pk)
    if level == "instance":
        source = source.join(dicom_instance, dicom_instance.c.series_pk == dicom_series.c.pk)
    pk = PK_OF[level]
    columns = [LABELLED[n] for n in names]
    return select(pk.label("_pk"), *columns).select_from(source).order_by(pk)


def _clause(level: Level, kw: str, value: str, fuzzy: bool) -> ColumnElement[bool]:
    attr = ATTRS.get(kw)
    if kw == "ModalitiesInStudy":
        codes = [m for m in value.replace(",", "\\").split("\\") if m]
        return (
            select(dicom_series.c.pk)
            .where(dicom_series.c.study_pk == dicom_study.c.pk, dicom_series.c.modality.in_(codes))
            .exists()
        )
    if attr is not None:
        return _value_clause(attr, value, fuzzy)
    return _extra_tag_clause(level, tag_hex(kw), value)


def _extra_tag_clause(level: Level, tag: str, value: str) -> ColumnElement[bool]:
    match = (
        wildcard(dicom_tag.c.value, value)
        if "*" in value or "?" in value
        else dicom_tag.c.value == value
    )
    if level == "instance":
        return (
            select(dicom_tag.c.instance_pk)
            .where(dicom_tag.c.instance_pk == dicom_instance.c.pk, dicom_tag.c.tag == tag, match)
            .exists()
        )
    return (
        select(dicom_tag.c.instance_pk)
        .select_from(dicom_tag.join(dicom_instance, dicom_instance.c.pk == dicom_tag.c.instance_pk))
        .where(
            dicom_instance.c.study_pk == dicom_study.c.pk
            if level == "study"
            else dicom_instance.c.series_pk == dicom_series.c.pk,
            dicom_tag.c.tag == tag,
            match,
        )
        .exists()
    )


def _returned(query: Query) -> list[str]:
    names = list(DEFAULTS[query.level])
    if query.include_all:
        names += [n for n, a in ATTRS.items() if a.level == query.level]
    names += sorted(query.include) + [kw for kw, _ in query.match]
    seen: dict[str, None] = {}
    for n in names:
        attr = ATTRS.get(n)
        if attr is not None and LEVELS.index(attr.level) > LEVELS.index(query.level):
            continue  # an instance attribute has no single value for a whole study
        seen.setdefault(n, None)
    return list(seen)


def _from_metadata(
    conn: Connection, level: Level, pks: list[int], names: list[str]
) -> dict[int, dict[str, Any]]:
    """Attributes outside the index, from the metadata of one instance per result."""
    if level == "instance":
        rows = conn.execute(
            select(dicom_instance.c.pk, dicom_instance.c.metadata).where(
                dicom_instance.c.pk.in_(pks)
            )
        ).all()
    else:
        owner = dicom_instance.c.study_pk if level == "study" else dicom_instance.c.series_pk
        first = (
            select(func.min(dicom_instance.c.pk)).where(owner.in_(pks)).group_by(owner)
        ).scalar_subquery()
        rows = conn.execute(
            select(owner, dicom_instance.c.metadata).where(dicom_instance.c.pk.in_(first))
        ).all()
    tags = {tag_hex(n): n for n in names}
    out: dict[int, dict[str, Any]] = {}
    for pk, blob in rows:
        document = orjson.loads(blob)
        out[pk] = {tags[t]: v for t, v in document.items() if t in tags}
    return out


def _element(vr: str, value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {"vr": vr}
    if vr == "PN":
        groups = str(value).split("=")
        names = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False))
        return {"vr": vr, "Value": [{k: v for k, v in names.items() if v}]}
    if vr in ("IS", "US"):
        return {"vr": vr, "Value": [int(value)]}
    return {"vr": vr, "Value": str(value).split("\\")}
