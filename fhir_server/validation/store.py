"""The stored StructureDefinitions, compiled once and kept in step with the store.

Like `terminology/store.py`: each use reads a stamp of the StructureDefinition rows (count,
sum of versions, latest update: one aggregate query); only when it changed are the changed
rows read and compiled again. A StructureDefinition the validator cannot use (no url, an
unsupported discriminator) is left out and logged, never a failed write elsewhere.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import Connection, and_, func, select

from .. import jsonio
from ..errors import FhirError
from ..schema import resource, resource_version
from .profile import Profile, compile_profile

log = logging.getLogger(__name__)
TYPE = "StructureDefinition"


class ProfileStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stamp: tuple[Any, ...] | None = None
        self._built: dict[int, tuple[int, Profile | None]] = {}
        self._by_url: dict[str, Profile] = {}

    def get(self, conn: Connection) -> dict[str, Profile]:
        """Profiles by canonical url (also `url|version`), as of the data `conn` sees."""
        stamp = tuple(
            conn.execute(
                select(
                    func.count(), func.sum(resource.c.version), func.max(resource.c.last_updated)
                ).where(resource.c.type == TYPE)
            ).one()
        )
        if stamp == self._stamp:
            return self._by_url
        with self._lock:
            if stamp != self._stamp:
                self._by_url = self._rebuild(conn)
                self._stamp = stamp
            return self._by_url

    def _rebuild(self, conn: Connection) -> dict[str, Profile]:
        rows = conn.execute(
            select(resource.c.pk, resource.c.version).where(
                resource.c.type == TYPE, resource.c.deleted.is_(False)
            )
        ).all()
        current = dict(rows)
        stale = [pk for pk, version in rows if self._built.get(pk, (None,))[0] != version]
        if stale:
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
                .where(resource.c.pk.in_(stale))
            )
            for pk, version, content in fetched:
                self._built[pk] = (version, _compile(content))
        for gone in self._built.keys() - current.keys():
            del self._built[gone]
        out: dict[str, Profile] = {}
        for _, profile in sorted(self._built.values(), key=lambda v: str(v[1] and v[1].version)):
            if profile is not None:
                out[profile.url] = profile  # the latest version by its text wins the bare url
                if profile.version:
                    out[f"{profile.url}|{profile.version}"] = profile
        return out


def _compile(content: bytes | None) -> Profile | None:
    if content is None:
        return None
    sd = jsonio.loads(content)
    if sd.get("derivation") != "constraint" or not sd.get("differential"):
        return None  # a base definition or a logical model: nothing for this validator
    try:
        return compile_profile(sd)
    except FhirError as exc:
        log.warning("StructureDefinition %s not used for validation: %s", sd.get("url"), exc)
        return None
