"""Runs an import job: plan from the source's listing, then send what is pending in batches.

Fetching (from the source) and sending (to the destination) overlap: up to `workers`
batches are in flight, and fetching waits while they are (back-pressure, so a fast PACS
cannot fill memory). Every item ends stored, present, quarantined or failed, written to
the ledger batch by batch, so a killed run loses at most the batches in flight, which
the next run sends again (the platform stores the same bytes once).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from .destination import Destination
from .ledger import FAILED, PENDING, Item, Job, Ledger, Listed

log = logging.getLogger("primage.import")

Advance = Callable[[int, int], None]  # (items, bytes) done since the last call


class SourceError(Exception):
    """The source cannot be read (unreachable, refused, malformed): one line saying why,
    never a payload or a credential."""


class Source(Protocol):
    kind: str

    def spec(self) -> dict[str, Any]: ...

    def listing(self) -> Iterator[Listed]: ...

    def fetch(self, items: Sequence[Item]) -> Iterator[tuple[Item, bytes | str]]:
        """The pending items' bytes, or the reason one could not be had."""
        ...

    def preview(self) -> Iterator[tuple[Any, int]]:
        """For --dry-run: (header Dataset, size) of what would be sent, without sending."""
        ...


def plan(ledger: Ledger, job: Job, source: Source) -> None:
    """The source's listing into the ledger (again after a crash while planning)."""
    if job.status == "planning":
        planned = ledger.plan(job.id, source.listing())
        log.info("import job %d: %d items planned", job.id, planned)
        ledger.set_status(job.id, "running")


def run(
    ledger: Ledger,
    job: Job,
    source: Source,
    destination: Destination,
    *,
    batch: int = 16,
    batch_bytes: int = 32 << 20,
    workers: int = 1,
    advance: Advance | None = None,
) -> dict[str, dict[str, int]]:
    """Works the job until nothing is pending; returns the ledger's counts."""
    plan(ledger, job, source)
    pending = ledger.items(job.id, (PENDING,))
    slots = threading.BoundedSemaphore(workers)
    failures: list[BaseException] = []

    def send(parts: list[tuple[Item, bytes]]) -> None:
        try:
            outcomes = destination.send([(item.key, data) for item, data in parts])
            ledger.record(job.id, outcomes)
            if advance is not None:
                advance(len(parts), sum(len(data) for _, data in parts))
        except BaseException as exc:
            failures.append(exc)
        finally:
            slots.release()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="import-send") as pool:
        futures: list[Future[None]] = []
        parts: list[tuple[Item, bytes]] = []
        size = 0
        unseen = {item.key for item in pending}
        for item, data in source.fetch(pending):
            unseen.discard(item.key)
            if isinstance(data, str):
                ledger.record(job.id, [(item.key, FAILED, data)])
                if advance is not None:
                    advance(1, 0)
                continue
            parts.append((item, data))
            size += len(data)
            if len(parts) >= batch or size >= batch_bytes:
                slots.acquire()
                futures.append(pool.submit(send, parts))
                parts, size = [], 0
            if failures:
                break
        if parts and not failures:
            slots.acquire()
            futures.append(pool.submit(send, parts))
        for future in futures:
            future.result()
    if failures:
        raise failures[0]
    if unseen:  # listed by the source, never handed over: no silent loss
        reason = "listed but not delivered by the source"
        ledger.record(job.id, [(key, FAILED, reason) for key in unseen])
    counts = ledger.counts(job.id)
    status = "done" if counts[PENDING]["items"] == counts[FAILED]["items"] == 0 else "incomplete"
    ledger.set_status(job.id, status)
    return counts
