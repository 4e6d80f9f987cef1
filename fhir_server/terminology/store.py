"""The terminology index kept in step with the CodeSystem, ValueSet and ConceptMap
resources stored on this server.

Each operation first reads a stamp of those three types (row count, sum of versions,
latest lastUpdated: one aggregate query on `ix_resource_type_last_updated`); when it
differs from the last one, only the resources whose version changed are read and indexed
again, and a new `Terminology` replaces the old one. So a ValueSet POSTed a moment ago is
usable by the next `$expand`, in every worker process.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Connection, and_, func, select

from .. import jsonio
from ..schema import resource, resource_version
from .index import CodeSystemIndex, Indexed, Terminology, index

TYPES = ("CodeSystem", "ValueSet", "ConceptMap")
_FETCH_BATCH = 200


class TerminologyStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stamp: tuple[Any, ...] | None = None
        self._current = Terminology()
        # (pk) -> (version, the indexed resource or None if it has no canonical url)
        self._built: dict[int, tuple[int, CodeSystemIndex | Indexed | None]] = {}

    def get(self, conn: Connection) -> Terminology:
        """The index as of the data `conn` sees (rebuilt only where something changed)."""
        stamp = tuple(
            conn.execute(
                select(
                    func.count(), func.sum(resource.c.version), func.max(resource.c.last_updated)
                ).where(resource.c.type.in_(TYPES))
            ).one()
        )
        if stamp == self._stamp:
            return self._current
        with self._lock:
            if stamp != self._stamp:
                self._current = self._rebuild(conn)
                self._stamp = stamp
            return self._current

    def _rebuild(self, conn: Connection) -> Terminology:
        rows = conn.execute(
            select(resource.c.pk, resource.c.version, resource.c.site).where(
                resource.c.type.in_(TYPES), resource.c.deleted.is_(False)
            )
        ).all()
        sites = {pk: site for pk, _, site in rows}
        stale = [pk for pk, version, _ in rows if self._built.get(pk, (None,))[0] != version]
        for start in range(0, len(stale), _FETCH_BATCH):
            batch = stale[start : start + _FETCH_BATCH]
            fetched = conn.execute(
                select(resource.c.pk, resource.c.version, resource_version.c.content)
                .select_from(
                    resource.join(
                        resource_version,
                        and_(
                            resource_version.c.resource_pk == resource.c.pk,
                            resource_version.c.version == resource.c.version,
                        ),
                    )
                )
                .where(resource.c.pk.in_(batch))
            )
            for pk, version, content in fetched:
                built = index(jsonio.loads(content), sites[pk]) if content is not None else None
                self._built[pk] = (version, built)
        for gone in self._built.keys() - sites.keys():
            del self._built[gone]
        terminology = Terminology()
        for _, built in self._built.values():
            if built is not None:
                terminology.add_indexed(built)
        return terminology
