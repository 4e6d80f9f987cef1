"""The audit trail's writer.

A write's AuditEvent commits with the write it describes. Every other event (reads,
searches, refusals) is queued in memory, stored every `interval` seconds as a plain row in
`audit_staging` (one cheap insert per batch), and turned into an indexed AuditEvent
resource later: before any request that reads AuditEvents, and by a sweep every `sweep`
seconds (0: none). Indexing an AuditEvent costs about 0.15 ms of CPU; done per request it
added 10-20 % to read latency. Done in batches in a worker, it held the GIL long enough
to stall that worker's requests, so `primage serve` sweeps in its background process.
A crash loses at most the events queued in the last `interval`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import orjson
from sqlalchemy import delete, insert, select

from fhir_server.audit import SITE_EXTENSION
from fhir_server.repository import Repository

from .auth.schema import audit_staging

log = logging.getLogger("primage.audit")

# Events of callers without a site (researchers, administrators) are not platform data
# that every site may read: they belong to this reserved site, which only site-less
# auditors see.
UNSITED = "_platform"


class AuditTrail:
    def __init__(
        self,
        write: Callable[[], AbstractContextManager[Repository]],
        read: Callable[[], AbstractContextManager[Repository]],
        interval: float = 0.25,
        sweep: float = 10.0,
        batch: int = 2000,
    ) -> None:
        self._write = write
        self._read = read
        self._interval = interval
        self._sweep = sweep
        self._batch = batch
        self._queue: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def __call__(self, repo: Repository | None, event: dict[str, Any]) -> None:
        if repo is not None:  # commits (or rolls back) with the caller's write
            caller_site, repo.site = repo.site, _site(event)
            try:
                repo.create(event)
            finally:
                repo.site = caller_site
        else:
            self._queue.put(event)

    def flush(self) -> int:
        """Store every queued event in the staging table now; returns how many."""
        written = 0
        with self._lock:
            while True:
                events = []
                while len(events) < self._batch:
                    try:
                        events.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if not events:
                    return written
                rows = [{"site": _site(e), "event": orjson.dumps(e)} for e in events]
                try:
                    with self._write() as repo:
                        repo.conn.execute(insert(audit_staging), rows)
                    written += len(events)
                except Exception:
                    log.exception("audit events could not be staged; retrying")
                    for e in events:
                        self._queue.put(e)
                    return written

    def materialize(self) -> int:
        """Turn staged events into AuditEvent resources (queued ones first); returns how many.

        Called before anything reads AuditEvents, so a search never misses a staged one."""
        self.flush()
        with self._read() as repo:  # the common case: nothing staged, and no write lock taken
            if repo.conn.execute(select(audit_staging.c.pk).limit(1)).first() is None:
                return 0
        done = 0
        while True:
            with self._write() as repo:
                query = select(audit_staging).order_by(audit_staging.c.pk).limit(self._batch)
                if repo.conn.dialect.name == "postgresql":  # two workers: each takes its own
                    query = query.with_for_update(skip_locked=True)
                rows = repo.conn.execute(query).all()
                if not rows:
                    return done
                by_site: dict[str, list[dict[str, Any]]] = {}
                for row in rows:
                    by_site.setdefault(row.site, []).append(orjson.loads(row.event))
                for site, events in by_site.items():
                    repo.site = site
                    repo.create_many([(e, str(uuid.uuid4())) for e in events])
                repo.conn.execute(
                    delete(audit_staging).where(audit_staging.c.pk.in_([r.pk for r in rows]))
                )
                done += len(rows)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        swept = time.monotonic()
        while not self._stop.wait(self._interval):
            try:
                self.flush()
                if 0 < self._sweep <= time.monotonic() - swept:
                    swept = time.monotonic()
                    self.materialize()
            except Exception:
                log.exception("audit writer")


def _site(event: dict[str, Any]) -> str:
    """The caller's site, which the event builder put on the agent."""
    for agent in event.get("agent", []):
        for extension in agent.get("extension", []):
            if extension.get("url") == SITE_EXTENSION:
                return str(extension["valueCode"])
    return UNSITED
