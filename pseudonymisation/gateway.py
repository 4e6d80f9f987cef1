"""The gateway's core: from a site's identified patient to the research pseudonym, the
per-person date offset and the keys the de-identifiers use.

One secret (`key`, shared by every gateway of a deployment and never by the linkage
service) drives everything deterministic: the Bloom-filter encodings, the UID remapping, the
date offset and the resource-id mapping, so the same child sent again, by the same or
another site, weeks later, comes out the same.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from .encoding import encode, local_token, seal_local_id
from .identity import Identity
from .linkage.client import Linkage

log = logging.getLogger("primage.gateway")


@dataclass(frozen=True, slots=True)
class Patient:
    """What the platform may know of a site's patient."""

    research_pseudonym: str
    offset_days: int
    status: str  # the linkage outcome: new | matched | review | known


class LinkageUnavailable(RuntimeError):
    """No pseudonym could be had: the write must wait (503), never go ahead without one."""


def derive(key: bytes, purpose: str) -> bytes:
    """A sub-key per purpose, so no two uses of the gateway secret share a key."""
    return hmac.new(key, f"primage-gateway|{purpose}".encode(), hashlib.sha256).digest()


class Pseudonyms:
    """Registers identities with the linkage service; remembers answers for a short while so
    a study's thousand instances cost one registration (in memory only, never on disk)."""

    def __init__(
        self,
        linkage: Linkage,
        key: bytes,
        max_shift_days: int = 180,
        ttl: float = 60.0,
        site_key: bytes | None = None,
    ) -> None:
        if max_shift_days < 1:
            raise ValueError("max_shift_days must be at least 1")
        self.linkage = linkage
        self._site_key = site_key
        self._encoding_key = derive(key, "encoding")
        self._offset_key = derive(key, "date-offset")
        self._key = key
        self.max_shift_days = max_shift_days
        self._ttl = ttl
        self._cache: OrderedDict[tuple[str, Identity], tuple[float, Patient]] = OrderedDict()
        self._lock = threading.Lock()

    def context_key(self, site: str) -> bytes:
        """The site's own key for its local ids (sealing, equality tokens): at an edge, a key
        only the hospital holds, so nobody else can read a sealed id back; in-process (the
        platform already sees the identity then), one derived from the gateway key."""
        if self._site_key is not None:
            return derive(self._site_key, f"context|{site}")
        return derive(self._key, f"context|{site}")

    def patient(self, site: str, identity: Identity) -> Patient:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get((site, identity))
            if hit is not None and hit[0] > now:
                self._cache.move_to_end((site, identity))
                return hit[1]
        context_key = self.context_key(site)
        local_id = identity.local_id or ""
        try:
            registration = self.linkage.register(
                site,
                encode(identity, self._encoding_key),
                local_token(context_key, local_id),
                seal_local_id(context_key, local_id),
            )
        except Exception as exc:  # its database or its network away: nothing to store yet
            log.error("linkage service unavailable (%s)", type(exc).__name__)
            raise LinkageUnavailable("The linkage service is unavailable; retry") from None
        patient = Patient(
            registration.research_pseudonym,
            self.offset(registration.research_pseudonym),
            registration.status,
        )
        with self._lock:
            self._cache[(site, identity)] = (now + self._ttl, patient)
            while len(self._cache) > 4096:
                self._cache.popitem(last=False)
        return patient

    def offset(self, pseudonym: str) -> int:
        """The person's date shift: in ±[1, max_shift_days] days, never 0, fixed per pseudonym."""
        digest = hmac.new(self._offset_key, pseudonym.encode(), hashlib.sha256).digest()
        n = int.from_bytes(digest[:8], "big")
        days = 1 + n % self.max_shift_days
        return -days if n >> 63 else days
