"""Something built from the stored resources of a few types (the terminology index, the
compiled profiles), kept in step with the store in every worker process.

Each use reads a stamp of those types (row count, sum of versions, latest lastUpdated: one
aggregate query on `ix_resource_type_last_updated`). Only when it differs from the last
one are the rows whose version changed read and built again, and the whole is assembled
anew from the built parts. So a ValueSet or profile stored a moment ago is used by the
next request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, and_, func, select

from . import jsonio
from .schema import resource, resource_version

Part = TypeVar("Part")
Whole = TypeVar("Whole")
_FETCH_BATCH = 200


class Derived(Generic[Part, Whole]):
    def __init__(
        self,
        types: tuple[str, ...],
        build: Callable[[dict[str, Any], str | None], Part | None],
        assemble: Callable[[Iterable[Part]], Whole],
    ) -> None:
        """`build(resource, site)` makes a part (None: nothing to use) from each stored
        resource; `assemble(parts)` makes the whole from all of them."""
        self._types = types
        self._build = build
        self._assemble = assemble
        self._lock = threading.Lock()
        self._stamp: tuple[Any, ...] | None = None
        self._built: dict[int, tuple[int, Part | None]] = {}  # pk -> (version, part)
        self._current = assemble(())

    def get(self, conn: Connection) -> Whole:
        """The whole as of the data `conn` sees (rebuilt only where something changed)."""
        stamp = tuple(
            conn.execute(
                select(
                    func.count(), func.sum(resource.c.version), func.max(resource.c.last_updated)
                ).where(resource.c.type.in_(self._types))
            ).one()
        )
        if stamp == self._stamp:
            return self._current
        with self._lock:
            if stamp != self._stamp:
                self._current = self._rebuild(conn)
                self._stamp = stamp
            return self._current

    def _rebuild(self, conn: Connection) -> Whole:
        rows = conn.execute(
            select(resource.c.pk, resource.c.version, resource.c.site).where(
                resource.c.type.in_(self._types), resource.c.deleted.is_(False)
            )
        ).all()
        sites = {pk: site for pk, _, site in rows}
        stale = [pk for pk, version, _ in rows if self._built.get(pk, (None,))[0] != version]
        for start in range(0, len(stale), _FETCH_BATCH):
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
                .where(resource.c.pk.in_(stale[start : start + _FETCH_BATCH]))
            )
            for pk, version, content in fetched:
                part = self._build(jsonio.loads(content), sites[pk]) if content else None
                self._built[pk] = (version, part)
        for gone in self._built.keys() - sites.keys():
            del self._built[gone]
        return self._assemble(part for _, part in self._built.values() if part is not None)
