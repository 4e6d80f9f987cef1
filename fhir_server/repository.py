"""FHIR persistence primitives over one database transaction.

A Repository is built per unit of work on a Connection whose transaction the caller owns
(one HTTP interaction, or a whole transaction Bundle), so every write (resource row, new
version, and later index rows and audit) commits or rolls back together. Conditional
interactions are composed from these primitives in `interactions.py`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    and_,
    bindparam,
    delete,
    func,
    insert,
    intersect,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import jsonio
from .access import Forbidden, may_see
from .bulk import insert_all
from .errors import Conflict, Gone, InvalidRequest, NotFound, PreconditionFailed
from .indexing import Indexer
from .instant import format_instant
from .schema import INDEX_TABLES, resource, resource_version, search_reference
from .search import Include

ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True, slots=True)
class Stored:
    """One version of a resource as stored: content is None for a delete."""

    type: str
    id: str
    version: int
    last_updated: datetime
    method: str
    content: bytes | None

    @property
    def deleted(self) -> bool:
        return self.content is None

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def reference(self) -> str:
        return f"{self.type}/{self.id}"


@dataclass(frozen=True, slots=True)
class Cursor:
    """Keyset position in a history listing (newest first)."""

    last_updated: datetime
    resource_pk: int
    version: int


def check_id(resource_id: str) -> str:
    if not ID_PATTERN.match(resource_id):
        raise InvalidRequest("Invalid resource id (FHIR ids are [A-Za-z0-9-.]{1,64})", ("id",))
    return resource_id


SITE_SYSTEM = "https://primage.eu/fhir/CodeSystem/site"


def stamp(
    body: dict[str, Any], resource_id: str, version: int, when: datetime, site: str | None = None
) -> tuple[dict[str, Any], bytes]:
    """The stored form: the client's JSON with the server's id and meta, id and meta first;
    a site's data carries the site as a meta.tag (what a client sent there is replaced)."""
    meta = dict(body.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = format_instant(when)
    tags = [
        t
        for t in meta.get("tag") or []
        if not (isinstance(t, dict) and t.get("system") == SITE_SYSTEM)
    ]
    if site is not None:
        tags.append({"system": SITE_SYSTEM, "code": site})
    if tags:
        meta["tag"] = tags
    else:
        meta.pop("tag", None)
    out: dict[str, Any] = {"resourceType": body["resourceType"], "id": resource_id, "meta": meta}
    for key, value in body.items():
        if key not in out:
            out[key] = value
    return out, jsonio.dumps(out)


# Built once: per-call statement construction showed up in profiles of bundle ingest.
_INSERT_RESOURCE = insert(resource).returning(resource.c.pk, sort_by_parameter_order=True)

_VERSION_COLUMNS = (
    resource_version.c.type,
    resource_version.c.id,
    resource_version.c.version,
    resource_version.c.last_updated,
    resource_version.c.method,
    resource_version.c.content,
)


def with_current(res: Any) -> Any:
    """`res` (the resource table or an alias) joined to its current version."""
    return res.join(
        resource_version,
        and_(
            resource_version.c.resource_pk == res.c.pk,
            resource_version.c.version == res.c.version,
        ),
    )


_CURRENT = (
    select(*_VERSION_COLUMNS, resource.c.site)
    .select_from(with_current(resource))
    .where(resource.c.type == bindparam("type"), resource.c.id == bindparam("id"))
)


class Repository:
    """Reads and writes resources on `conn`; never commits (the caller owns the transaction)."""

    def __init__(
        self,
        conn: Connection,
        indexer: Indexer | None = None,
        clock: Callable[[], datetime] | None = None,
        guard: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.conn = conn
        self.indexer = indexer
        # The store boundary's last check on every resource written (raises FhirError)
        self.guard = guard
        self._clock = clock or (lambda: datetime.now(UTC))
        self._locking = conn.dialect.name == "postgresql"
        # The caller's site: it sees its own and platform data, and writes only its own.
        # None: sees everything; what it creates is platform data.
        self.site: str | None = None

    def visible(self, res: Any = resource) -> list[Any]:
        """WHERE clauses limiting `res` (the resource table or an alias) to what the caller's
        site may see."""
        if self.site is None:
            return []
        return [or_(res.c.site == self.site, res.c.site.is_(None))]

    def _may_see(self, site: str | None) -> bool:
        return may_see(self.site, site)

    # --- reads -----------------------------------------------------------------------------

    def current(self, type_: str, id_: str) -> Stored | None:
        """The current version (deleted or not), or None if the resource never existed (or
        belongs to a site the caller may not see: the two are indistinguishable)."""
        row = self.conn.execute(_CURRENT, {"type": type_, "id": id_}).first()
        if row is None or not self._may_see(row[-1]):
            return None
        return Stored(*row[:-1])

    def read(self, type_: str, id_: str) -> Stored:
        found = self.current(type_, id_)
        if found is None:
            raise NotFound(f"{type_}/{id_} is not known")
        if found.deleted:
            raise Gone(f"{type_}/{id_} was deleted")
        return found

    def vread(self, type_: str, id_: str, version: str) -> Stored:
        if not version.isdigit():
            raise NotFound(f"{type_}/{id_} has no version {version[:20]!r}")
        row = self.conn.execute(
            select(*_VERSION_COLUMNS)
            .select_from(resource_version.join(resource))
            .where(
                resource.c.type == type_,
                resource.c.id == id_,
                resource_version.c.version == int(version),
                *self.visible(),
            )
        ).first()
        if row is None:
            raise NotFound(f"{type_}/{id_} has no version {version}")
        found = Stored(*row)
        if found.deleted:
            raise Gone(f"Version {version} of {type_}/{id_} is a deletion")
        return found

    def search_ids(
        self, type_: str, where: Iterable[Any], after_pk: int | None, limit: int | None
    ) -> list[tuple[int, Stored]]:
        """Current, non-deleted resources of a type matching `where`, in pk order."""
        after = (lambda pk: pk > after_pk) if after_pk is not None else None
        hits = self.search_page([type_], where, [], after, limit)
        return [(pk, stored) for pk, _, stored in hits]

    def search_page(
        self,
        types: list[str] | None,
        where: Iterable[Any],
        order: list[Any],
        after: Callable[[Any], Any] | None,
        limit: int | None,
        keys: list[Any] = (),  # type: ignore[assignment]
        joins: list[Any] = (),  # type: ignore[assignment]
    ) -> list[tuple[int, tuple[Any, ...], Stored]]:
        """One page of matches: (pk, sort-key values, stored), ordered by `order` then pk.

        `after(pk_column)` is the keyset condition that starts the page; `joins` are
        per-resource subqueries (sort keys) left-joined on their resource_pk.
        """
        source = with_current(resource)
        for sub in joins:
            source = source.outerjoin(sub, sub.c.resource_pk == resource.c.pk)
        query = (
            select(resource.c.pk, *keys, *_VERSION_COLUMNS)
            .select_from(source)
            .where(resource.c.deleted.is_(False), *_of_types(types), *self.visible(), *where)
            .order_by(*order, resource.c.pk)
        )
        if after is not None:
            query = query.where(after(resource.c.pk))
        if limit is not None:
            query = query.limit(limit)
        n = len(keys)
        return [
            (row[0], tuple(row[1 : n + 1]), Stored(*row[n + 1 :]))
            for row in self.conn.execute(query)
        ]

    def included(
        self,
        page: list[tuple[int, Stored]],
        include: list[Include],
        revinclude: list[Include],
        limit: int,
        readable: Callable[[str], bool] | None = None,
    ) -> list[Stored]:
        """Resources that `_include` / `_revinclude` add to a page (current, not deleted).

        `:iterate` repeats on what was just included, up to three rounds.
        """
        seen = {(s.type, s.id) for _, s in page}
        out: list[Stored] = []
        frontier = page
        for round_ in range(3):
            found: list[tuple[int, Stored]] = []
            for inc in include:
                if round_ == 0 or inc.iterate:
                    found += self._forward(frontier, inc)
            for inc in revinclude:
                if round_ == 0 or inc.iterate:
                    found += self._reverse(frontier, inc)
            frontier = []
            for pk, stored in found:
                if readable is not None and not readable(stored.type):
                    continue  # not returned, and not a step for :iterate either
                if (stored.type, stored.id) not in seen and len(out) < limit:
                    seen.add((stored.type, stored.id))
                    out.append(stored)
                    frontier.append((pk, stored))
            if not frontier:
                break
        return out

    def _forward(self, page: list[tuple[int, Stored]], inc: Include) -> list[tuple[int, Stored]]:
        pks = [pk for pk, s in page if s.type == inc.source]
        if not pks:
            return []
        ref = search_reference
        target = resource.alias("target")
        query = (
            select(target.c.pk, *_VERSION_COLUMNS)
            .select_from(
                ref.join(
                    with_current(target),
                    and_(target.c.type == ref.c.target_type, target.c.id == ref.c.target_id),
                )
            )
            .where(
                ref.c.resource_pk.in_(pks),
                ref.c.type == inc.source,
                target.c.deleted.is_(False),
                *self.visible(target),
            )
            .distinct()
        )
        if inc.param:
            query = query.where(ref.c.param == inc.param)
        if inc.target:
            query = query.where(ref.c.target_type == inc.target)
        return [(row[0], Stored(*row[1:])) for row in self.conn.execute(query)]

    def _reverse(self, page: list[tuple[int, Stored]], inc: Include) -> list[tuple[int, Stored]]:
        keys = [(s.type, s.id) for _, s in page if inc.target in (None, s.type)]
        if not keys:
            return []
        ref = search_reference
        source = resource.alias("source")
        query = (
            select(source.c.pk, *_VERSION_COLUMNS)
            .select_from(ref.join(with_current(source), source.c.pk == ref.c.resource_pk))
            .where(
                ref.c.type == inc.source,
                tuple_(ref.c.target_type, ref.c.target_id).in_(keys),
                source.c.deleted.is_(False),
                *self.visible(source),
            )
            .distinct()
        )
        if inc.param:
            query = query.where(ref.c.param == inc.param)
        return [(row[0], Stored(*row[1:])) for row in self.conn.execute(query)]

    def all_current(self, type_: str, *, platform: bool = False) -> list[Stored]:
        """Every current, non-deleted resource of a (small) type, e.g. SearchParameter;
        `platform`: only those no site owns."""
        where = [resource.c.site.is_(None)] if platform else []
        return [stored for _, stored in self.search_ids(type_, where, None, None)]

    def count_matches(self, sets: list[Any]) -> int:
        """How many resources are in every one of these pk sets (one-column SELECTs).

        Counted on the index tables alone: their rows exist only for current, non-deleted
        resources of their type, so the resource table need not be read.
        """
        combined = sets[0] if len(sets) == 1 else intersect(*sets)
        if self.site is not None:  # a site's count must look at the resources' sites
            query = select(func.count()).where(resource.c.pk.in_(combined), *self.visible())
            return int(self.conn.execute(query).scalar_one())
        distinct_pks = combined.subquery() if len(sets) > 1 else sets[0].distinct().subquery()
        return int(self.conn.execute(select(func.count()).select_from(distinct_pks)).scalar_one())

    def count(self, types: list[str] | None, where: Iterable[Any]) -> int:
        query = (
            select(func.count())
            .select_from(resource)
            .where(resource.c.deleted.is_(False), *_of_types(types), *self.visible(), *where)
        )
        return int(self.conn.execute(query).scalar_one())

    def history(
        self,
        type_: str | None,
        id_: str | None,
        since: datetime | None,
        after: Cursor | None,
        limit: int,
    ) -> list[tuple[Cursor, Stored]]:
        """Versions newest first, as FHIR history orders them."""
        query: Select[Any] = select(resource_version.c.resource_pk, *_VERSION_COLUMNS)
        if self.site is not None:
            query = query.join(resource, resource.c.pk == resource_version.c.resource_pk).where(
                *self.visible()
            )
        if id_ is not None and type_ is not None:
            pk = self.conn.execute(
                select(resource.c.pk).where(
                    resource.c.type == type_, resource.c.id == id_, *self.visible()
                )
            ).scalar()
            if pk is None:
                raise NotFound(f"{type_}/{id_} is not known")
            query = query.where(resource_version.c.resource_pk == pk)
        elif type_ is not None:
            query = query.where(resource_version.c.type == type_)
        if since is not None:
            query = query.where(resource_version.c.last_updated >= since)
        if after is not None:
            query = query.where(
                tuple_(
                    resource_version.c.last_updated,
                    resource_version.c.resource_pk,
                    resource_version.c.version,
                )
                < tuple_(after.last_updated, after.resource_pk, after.version)
            )
        query = query.order_by(
            resource_version.c.last_updated.desc(),
            resource_version.c.resource_pk.desc(),
            resource_version.c.version.desc(),
        ).limit(limit)
        out = []
        for row in self.conn.execute(query):
            stored = Stored(*row[1:])
            out.append((Cursor(stored.last_updated, row[0], stored.version), stored))
        return out

    # --- writes ----------------------------------------------------------------------------

    def create(
        self, body: dict[str, Any], id_: str | None = None, *, assigned: bool = False
    ) -> Stored:
        """Insert a new resource.

        No `id_`: the server assigns one (POST). `id_` with `assigned`: an id the server chose
        earlier (a transaction resolving urn:uuid references). `id_` alone: the client's id
        (create-on-update, PUT), which another client may be creating at the same moment.
        """
        if id_ is None or assigned:
            return self.create_many([(body, id_ or str(uuid.uuid4()))])[0]
        if self.guard is not None:
            self.guard(body)
        type_ = body["resourceType"]
        when = self._clock()
        document, content = stamp(body, id_, 1, when, self.site)
        dialect_insert = pg_insert if self._locking else sqlite_insert
        # ON CONFLICT DO NOTHING: the loser of a race must not abort the whole transaction.
        new_pk = self.conn.execute(
            dialect_insert(resource).on_conflict_do_nothing().returning(resource.c.pk),
            {
                "type": type_,
                "id": id_,
                "version": 1,
                "last_updated": when,
                "deleted": False,
                "site": self.site,
            },
        ).scalar()
        if new_pk is None:
            raise Conflict(f"{type_}/{id_} was created concurrently; retry")
        self._write_rows(
            [_version_row(new_pk, type_, id_, 1, when, "PUT", content)], [(new_pk, document)]
        )
        return Stored(type_, id_, 1, when, "PUT", content)

    def create_many(self, items: list[tuple[dict[str, Any], str]]) -> list[Stored]:
        """Insert resources with server-chosen ids (fresh UUIDs) in two round trips in all."""
        if not items:
            return []
        if self.guard is not None:
            for body, _ in items:
                self.guard(body)
        when = self._clock()
        rows = [
            {
                "type": body["resourceType"],
                "id": id_,
                "version": 1,
                "last_updated": when,
                "deleted": False,
                "site": self.site,
            }
            for body, id_ in items
        ]
        pks = self.conn.execute(_INSERT_RESOURCE, rows).scalars().all()
        stamped = [stamp(body, id_, 1, when, self.site) for body, id_ in items]
        stored = [
            Stored(body["resourceType"], id_, 1, when, "POST", content)
            for (body, id_), (_, content) in zip(items, stamped, strict=True)
        ]
        versions = [
            {
                "resource_pk": pk,
                "version": 1,
                "type": s.type,
                "id": s.id,
                "last_updated": when,
                "method": "POST",
                "content": s.content,
            }
            for pk, s in zip(pks, stored, strict=True)
        ]
        self._write_rows(
            versions,
            [(pk, document) for pk, (document, _) in zip(pks, stamped, strict=True)],
        )
        return stored

    def update(
        self, body: dict[str, Any], id_: str, if_match: int | None = None
    ) -> tuple[Stored, bool]:
        """Write a new version (or create with this id); returns (stored, created)."""
        type_ = body["resourceType"]
        if self.guard is not None:
            self.guard(body)
        current = self._locked_row(type_, id_)
        if current is None:
            if if_match is not None:
                raise PreconditionFailed(f"{type_}/{id_} does not exist (If-Match given)")
            return self.create(body, id_), True
        pk, version, deleted, site = current
        if if_match is not None and if_match != version:
            raise PreconditionFailed(
                f"{type_}/{id_} is at version {version}, not {if_match}",
            )
        when = self._clock()
        document, content = stamp(body, id_, version + 1, when, site)
        self._advance(pk, version, when, deleted=False)
        self._unindex(pk)
        self._write_rows(
            [_version_row(pk, type_, id_, version + 1, when, "PUT", content)], [(pk, document)]
        )
        return Stored(type_, id_, version + 1, when, "PUT", content), deleted

    def delete(self, type_: str, id_: str, if_match: int | None = None) -> Stored | None:
        """Record a deletion version; None if there was nothing (left) to delete."""
        current = self._locked_row(type_, id_, deleting=True)
        if current is None:
            if if_match is not None:
                raise PreconditionFailed(f"{type_}/{id_} does not exist (If-Match given)")
            return None
        pk, version, deleted, _ = current
        if if_match is not None and if_match != version:
            raise PreconditionFailed(f"{type_}/{id_} is at version {version}, not {if_match}")
        if deleted:
            return None
        when = self._clock()
        self._advance(pk, version, when, deleted=True)
        self._unindex(pk)
        self._write_rows([_version_row(pk, type_, id_, version + 1, when, "DELETE", None)], [])
        return Stored(type_, id_, version + 1, when, "DELETE", None)

    def _locked_row(
        self, type_: str, id_: str, *, deleting: bool = False
    ) -> tuple[int, int, bool, str | None] | None:
        """The row about to change, locked; a site client may change only its own site's.

        Another site's row is answered as if it were not there (a delete is a no-op, an
        update a 404), so a write cannot tell that it exists; platform rows, which the site
        sees, are refused (403)."""
        query = select(
            resource.c.pk, resource.c.version, resource.c.deleted, resource.c.site
        ).where(resource.c.type == type_, resource.c.id == id_)
        if self._locking:
            query = query.with_for_update()
        row = self.conn.execute(query).first()
        if row is None:
            return None
        if self.site is not None and row[3] != self.site:
            if row[3] is None:
                raise Forbidden(f"{type_}/{id_} is platform data, not this site's to change")
            if deleting:
                return None
            raise NotFound(f"{type_}/{id_} is not known")
        return (row[0], row[1], row[2], row[3])

    def _advance(self, pk: int, version: int, when: datetime, *, deleted: bool) -> None:
        # Compare-and-set on the version: a concurrent writer that slipped past the row lock
        # (SQLite has none) cannot be silently overwritten.
        done = self.conn.execute(
            update(resource)
            .where(resource.c.pk == pk, resource.c.version == version)
            .values(version=version + 1, last_updated=when, deleted=deleted)
        ).rowcount
        if done != 1:
            raise PreconditionFailed("The resource was changed concurrently; retry")

    def _write_rows(
        self, versions: list[dict[str, Any]], documents: list[tuple[int, dict[str, Any]]]
    ) -> None:
        """Version rows and the search-index rows of the new current versions, in one go."""
        batches: dict[str, list[dict[str, Any]]] = {}
        if self.indexer is not None:
            for pk, document in documents:
                for kind, rows in self.indexer.rows(document).items():
                    batches.setdefault(kind, []).extend({"resource_pk": pk, **row} for row in rows)
        insert_all(
            self.conn,
            [(resource_version, versions)]
            + [(INDEX_TABLES[kind], rows) for kind, rows in batches.items()],
        )

    def _unindex(self, pk: int) -> None:
        if self.indexer is None:
            return
        for table in INDEX_TABLES.values():
            self.conn.execute(delete(table).where(table.c.resource_pk == pk))


def _version_row(
    pk: int, type_: str, id_: str, version: int, when: datetime, method: str, content: bytes | None
) -> dict[str, Any]:
    return {
        "resource_pk": pk,
        "version": version,
        "type": type_,
        "id": id_,
        "last_updated": when,
        "method": method,
        "content": content,
    }


def _of_types(types: list[str] | None) -> list[Any]:
    if types is None:
        return []
    return [resource.c.type == types[0]] if len(types) == 1 else [resource.c.type.in_(types)]
