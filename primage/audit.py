"""The audit trail's writer: AuditEvents commit with the write they describe, or (reads,
failures) go through a queue that a background thread writes in batches.

Queued events are written within about `interval` seconds; a crash loses at most those
not yet written (the write path's events are never queued). `flush()` writes them now.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from fhir_server.audit import SITE_EXTENSION
from fhir_server.repository import Repository

log = logging.getLogger("primage.audit")


class AuditTrail:
    def __init__(
        self,
        write: Callable[[], AbstractContextManager[Repository]],
        interval: float = 0.25,
        batch: int = 500,
    ) -> None:
        self._write = write
        self._interval = interval
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
        """Write every queued event now; returns how many."""
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
                by_site: dict[str, list[dict[str, Any]]] = {}
                for e in events:
                    by_site.setdefault(_site(e), []).append(e)
                try:
                    with self._write() as repo:
                        for site, group in by_site.items():  # an event belongs to its site
                            repo.site = site
                            repo.create_many([(e, str(uuid.uuid4())) for e in group])
                    written += len(events)
                except Exception:
                    log.exception("audit events could not be written; retrying")
                    for e in events:
                        self._queue.put(e)
                    return written

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()


# Events of callers without a site (researchers, administrators) are not platform data
# that every site may read: they belong to this reserved site, which only site-less
# auditors see.
UNSITED = "_platform"


def _site(event: dict[str, Any]) -> str:
    """The caller's site, which the event builder put on the agent."""
    for agent in event.get("agent", []):
        for extension in agent.get("extension", []):
            if extension.get("url") == SITE_EXTENSION:
                return str(extension["valueCode"])
    return UNSITED
