"""The archive's index: writes of checked instances and the lookups WADO and delete need.

Works on a FHIR `Repository`'s connection so that index rows and the ImagingStudy the
study maps to commit in one transaction. Blobs are committed by the caller before `save`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Connection, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .errors import Failure, Forbidden, NotFound
from .schema import dicom_instance, dicom_series, dicom_study, dicom_tag

DuplicatePolicy = Literal["reject", "replace"]
# One reason for every refusal that involves another site's data, so that a refusal does
# not tell which of a study, a series or an instance exists elsewhere.
NOT_HERE = "cannot be stored in this study by this site"


@dataclass(frozen=True, slots=True)
class Prepared:
    """An instance ready to index: blob committed, metadata and index values computed."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    blob: str
    size: int
    metadata: bytes
    values: dict[str, dict[str, Any]]
    tags: dict[str, str]  # extended query tags: GGGGEEEE -> value


@dataclass(frozen=True, slots=True)
class Saved:
    prepared: Prepared
    replaced_blob: str | None = None  # a blob no longer referenced after a replace


def _insert(conn: Connection) -> Any:
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


def save(
    conn: Connection, items: list[Prepared], policy: DuplicatePolicy, site: str | None = None
) -> tuple[list[Saved], list[tuple[Prepared, Failure]], set[int]]:
    """Index `items` for `site`; returns (stored, refused, pks of the studies touched)."""
    now = datetime.now(UTC)
    refused: list[tuple[Prepared, Failure]] = []
    if site is not None:  # a site adds only to its own studies (or starts new ones)
        foreign = set(
            conn.execute(
                select(dicom_study.c.study_uid).where(
                    dicom_study.c.study_uid.in_({p.study_uid for p in items}),
                    or_(dicom_study.c.site != site, dicom_study.c.site.is_(None)),
                )
            ).scalars()
        )
        reason = NOT_HERE
        refused += [(p, Failure.mismatch(reason)) for p in items if p.study_uid in foreign]
        items = [p for p in items if p.study_uid not in foreign]
    existing = {
        row.sop_uid: row
        for row in conn.execute(
            select(
                dicom_instance.c.pk,
                dicom_instance.c.sop_uid,
                dicom_instance.c.blob,
                dicom_instance.c.study_pk,
                dicom_study.c.site,
            )
            .join(dicom_study, dicom_study.c.pk == dicom_instance.c.study_pk)
            .where(dicom_instance.c.sop_uid.in_([p.sop_uid for p in items]))
        )
    }
    stored: list[Saved] = []
    fresh: list[tuple[Prepared, str | None]] = []
    touched: set[int] = set()
    seen: set[str] = set()
    for item in items:
        old = existing.get(item.sop_uid)
        if item.sop_uid in seen:
            refused.append((item, Failure(Failure.DUPLICATE_SOP_INSTANCE, "twice in one request")))
            continue
        seen.add(item.sop_uid)
        if old is None:
            fresh.append((item, None))
        elif site is not None and old.site != site:
            refused.append((item, Failure.mismatch(NOT_HERE)))
        elif old.blob == item.blob:
            stored.append(Saved(item))  # the same bytes again: nothing to do
        elif policy == "replace":
            _delete_instances(conn, [old.pk])
            touched.add(old.study_pk)  # the old copy's study may be another one
            fresh.append((item, old.blob))
        else:
            reason = "SOP Instance already stored with different content"
            refused.append((item, Failure(Failure.DUPLICATE_SOP_INSTANCE, reason)))
    studies = _upsert_studies(conn, [p for p, _ in fresh], now, site)
    lost = [(p, old) for p, old in fresh if p.study_uid not in studies]
    refused += [(p, Failure.mismatch(NOT_HERE)) for p, _ in lost]
    fresh = [(p, old) for p, old in fresh if p.study_uid in studies]
    series = _upsert_series(conn, [p for p, _ in fresh], studies)
    placed = []
    for item, old in fresh:
        pk, study_pk = series[item.series_uid]
        if study_pk != studies[item.study_uid]:
            reason = NOT_HERE if site is not None else "the series belongs to another study"
            refused.append((item, Failure.mismatch(reason)))
        else:
            placed.append((item, old, pk))
    if placed:
        rows = [
            {
                "study_pk": studies[p.study_uid],
                "series_pk": series_pk,
                "sop_uid": p.sop_uid,
                "sop_class_uid": p.sop_class_uid,
                "transfer_syntax": p.transfer_syntax,
                "blob": p.blob,
                "size": p.size,
                "metadata": p.metadata,
                "stored": now,
                **p.values["instance"],
            }
            for p, _, series_pk in placed
        ]
        pks = (
            conn.execute(
                insert(dicom_instance).returning(dicom_instance.c.pk, sort_by_parameter_order=True),
                rows,
            )
            .scalars()
            .all()
        )
        tag_rows = [
            {"instance_pk": pk, "tag": tag, "value": value[:255]}
            for pk, (p, _, _) in zip(pks, placed, strict=True)
            for tag, value in p.tags.items()
        ]
        if tag_rows:
            conn.execute(insert(dicom_tag), tag_rows)
        stored.extend(Saved(p, old) for p, old, _ in placed)
    touched |= set(studies.values())
    _drop_empty_series(conn, touched)
    refresh_counts(conn, touched, now)
    return stored, refused, touched


def _upsert_studies(
    conn: Connection, items: list[Prepared], now: datetime, site: str | None
) -> dict[str, int]:
    """The studies' pks. New studies get a row; known ones take the latest instance's
    patient/study attributes (a corrected resend corrects the index). In UID order, so two
    writers lock rows in the same order; on PostgreSQL the upsert locks the row until
    commit, which serialises the count refreshes of concurrent writers to one study."""
    last: dict[str, Prepared] = {}
    for p in items:
        last[p.study_uid] = p
    for uid in sorted(last):
        values = last[uid].values["study"]
        statement = _insert(conn)(dicom_study).values(
            study_uid=uid, num_series=0, num_instances=0, updated=now, site=site, **values
        )
        # only a row of the same site (or any row, for a caller without one) takes the new
        # attributes: a concurrent STOW by another site of the same new UID must not
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=[dicom_study.c.study_uid],
                set_={**values, "updated": now},
                where=dicom_study.c.site == site if site is not None else None,
            )
        )
    if not last:
        return {}
    return {
        uid: pk
        for uid, pk, owner in conn.execute(
            select(dicom_study.c.study_uid, dicom_study.c.pk, dicom_study.c.site).where(
                dicom_study.c.study_uid.in_(list(last))
            )
        ).all()
        if site is None or owner == site  # lost the race to another site: not ours
    }


def _upsert_series(
    conn: Connection, items: list[Prepared], studies: dict[str, int]
) -> dict[str, tuple[int, int]]:
    """series UID -> (pk, study pk); a known series keeps its study (checked per item)."""
    last: dict[str, Prepared] = {}
    for p in items:
        last[p.series_uid] = p
    for uid in sorted(last):
        values = last[uid].values["series"]
        statement = _insert(conn)(dicom_series).values(
            study_pk=studies[last[uid].study_uid], series_uid=uid, num_instances=0, **values
        )
        # a known series keeps its study: only its own study's instances update it
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=[dicom_series.c.series_uid],
                set_=values,
                where=dicom_series.c.study_pk == studies[last[uid].study_uid],
            )
        )
    if not last:
        return {}
    rows = conn.execute(
        select(dicom_series.c.series_uid, dicom_series.c.pk, dicom_series.c.study_pk).where(
            dicom_series.c.series_uid.in_(list(last))
        )
    ).all()
    return {uid: (pk, study_pk) for uid, pk, study_pk in rows}


def _drop_empty_series(conn: Connection, study_pks: set[int]) -> None:
    if not study_pks:
        return
    empty = select(dicom_series.c.pk).where(
        dicom_series.c.study_pk.in_(list(study_pks)),
        ~select(dicom_instance.c.pk)
        .where(dicom_instance.c.series_pk == dicom_series.c.pk)
        .exists(),
    )
    conn.execute(delete(dicom_series).where(dicom_series.c.pk.in_(empty)))


def refresh_counts(conn: Connection, study_pks: Iterable[int], now: datetime) -> None:
    """Series/instance counts and ModalitiesInStudy, recomputed for the studies touched."""
    for study_pk in study_pks:
        per_series = conn.execute(
            select(dicom_series.c.pk, dicom_series.c.modality, func.count(dicom_instance.c.pk))
            .select_from(dicom_series.outerjoin(dicom_instance))
            .where(dicom_series.c.study_pk == study_pk)
            .group_by(dicom_series.c.pk, dicom_series.c.modality)
        ).all()
        for series_pk, _, count in per_series:
            conn.execute(
                update(dicom_series).where(dicom_series.c.pk == series_pk),
                {"num_instances": count},
            )
        live = [(m, n) for _, m, n in per_series if n]
        conn.execute(
            update(dicom_study).where(dicom_study.c.pk == study_pk),
            {
                "num_series": len(live),
                "num_instances": sum(n for _, n in live),
                "modalities": "\\".join(sorted({m for m, _ in live if m})) or None,
                "updated": now,
            },
        )


# --- lookups for WADO and delete ---------------------------------------------------------


def visible(site: str | None) -> list[Any]:
    """A site sees its own studies and platform ones (no site); no site sees everything."""
    if site is None:
        return []
    return [or_(dicom_study.c.site == site, dicom_study.c.site.is_(None))]


def scope(
    conn: Connection,
    study: str,
    series: str | None = None,
    instance: str | None = None,
    site: str | None = None,
    *,
    owned: bool = False,
) -> Any:
    """A WHERE clause on dicom_instance for the addressed study/series/instance; 404 if none
    (or not visible to `site`); `owned`: 403 unless the study is the site's own."""
    row = conn.execute(
        select(dicom_study.c.pk, dicom_study.c.site).where(
            dicom_study.c.study_uid == study, *visible(site)
        )
    ).first()
    if row is None:
        raise NotFound("Study not found")
    study_pk = row.pk
    if owned and site is not None and row.site != site:
        raise Forbidden("The study is not this site's to change")
    clause = dicom_instance.c.study_pk == study_pk
    if series is not None:
        series_pk = conn.execute(
            select(dicom_series.c.pk).where(
                dicom_series.c.series_uid == series, dicom_series.c.study_pk == study_pk
            )
        ).scalar()
        if series_pk is None:
            raise NotFound("Series not found in this study")
        clause = dicom_instance.c.series_pk == series_pk
        if instance is not None:
            clause = clause & (dicom_instance.c.sop_uid == instance)
    return clause


def lookup(
    conn: Connection,
    columns: list[Any],
    study: str,
    series: str | None,
    instance: str | None,
    site: str | None = None,
) -> list[Any]:
    """The addressed instances' `columns` in one query (series, then instance order); 404s
    name the level that is missing."""
    query = (
        select(*columns)
        .select_from(dicom_instance)
        .join(dicom_study, dicom_study.c.pk == dicom_instance.c.study_pk)
        .where(dicom_study.c.study_uid == study, *visible(site))
    )
    if series is not None:
        query = query.where(dicom_series.c.series_uid == series)
    if instance is not None:
        query = query.where(dicom_instance.c.sop_uid == instance)
    rows = conn.execute(ordered(query)).all()
    if not rows:
        scope(conn, study, series, instance, site)  # raises the precise 404
        raise NotFound("Instance not found")
    return rows


def ordered(query: Any) -> Any:
    return query.join(dicom_series, dicom_series.c.pk == dicom_instance.c.series_pk).order_by(
        dicom_series.c.series_number,
        dicom_series.c.pk,
        dicom_instance.c.instance_number,
        dicom_instance.c.pk,
    )


def unreferenced(conn: Connection, keys: Iterable[str]) -> list[str]:
    """The blob keys among `keys` that no instance row names."""
    keys = set(keys)
    used = set(
        conn.execute(select(dicom_instance.c.blob).where(dicom_instance.c.blob.in_(keys))).scalars()
    )
    return sorted(keys - used)


def remove(conn: Connection, clause: Any) -> tuple[list[str], set[int]]:
    """Deletes the instances under `clause`, and series/studies left empty.

    Returns the blob keys no longer referenced (to delete after commit) and the touched
    study pks (to refresh their counts and ImagingStudy)."""
    rows = conn.execute(
        select(dicom_instance.c.pk, dicom_instance.c.blob, dicom_instance.c.study_pk).where(clause)
    ).all()
    if not rows:
        raise NotFound("Instance not found")
    _delete_instances(conn, [r.pk for r in rows])
    studies = {r.study_pk for r in rows}
    _drop_empty_series(conn, studies)
    return unreferenced(conn, {r.blob for r in rows}), studies


def _delete_instances(conn: Connection, pks: list[int]) -> None:
    conn.execute(delete(dicom_tag).where(dicom_tag.c.instance_pk.in_(pks)))
    conn.execute(delete(dicom_instance).where(dicom_instance.c.pk.in_(pks)))


def drop_empty_studies(conn: Connection, study_pks: Iterable[int]) -> dict[int, str]:
    """Deletes studies without instances; returns their pks and UIDs."""
    rows = conn.execute(
        select(dicom_study.c.pk, dicom_study.c.study_uid).where(
            dicom_study.c.pk.in_(list(study_pks)), dicom_study.c.num_instances == 0
        )
    ).all()
    if rows:
        conn.execute(delete(dicom_study).where(dicom_study.c.pk.in_([r.pk for r in rows])))
    return {r.pk: r.study_uid for r in rows}
