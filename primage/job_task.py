"""An import job run inside the platform, visible over HTTP as a FHIR Task.

The Task (`Task/import-<job>-<created>`) belongs to the job's site, so that site's clients
(and researchers) read its progress with `GET /fhir/Task/...` or search
`Task?identifier=<system>|<job>`: status (in-progress, completed, failed), and per item state
an output count. It says what kind of import it is and never what was selected (patient
ids, paths), which stays in the importer's ledger.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from curation.ledger import FAILED, PENDING, Job
from fhir_server.instant import format_instant
from fhir_server.repository import Repository

JOB_SYSTEM = "https://primage.eu/fhir/NamingSystem/import-job"
TASK_CODES = "https://primage.eu/fhir/CodeSystem/primage-task"


def task_id(job: Job) -> str:
    return f"import-{job.id}-{int(job.created.timestamp())}"


def task(job: Job, counts: dict[str, dict[str, int]], status: str) -> dict[str, Any]:
    done = sum(c["items"] for s, c in counts.items() if s != PENDING)
    total = done + counts[PENDING]["items"]
    return {
        "resourceType": "Task",
        "id": task_id(job),
        "identifier": [{"system": JOB_SYSTEM, "value": str(job.id)}],
        "status": status,
        "intent": "order",
        "code": {"coding": [{"system": TASK_CODES, "code": f"import-{job.kind}"}]},
        "authoredOn": format_instant(job.created),
        "lastModified": format_instant(datetime.now(UTC)),
        "businessStatus": {"text": f"{done} of {total} items"},
        "output": [
            {"type": {"text": state}, "valueInteger": figures["items"]}
            for state, figures in counts.items()
        ],
    }


class TaskPublisher:
    """Writes the job's Task when the run starts, at most every `interval` seconds while
    it runs (from the runner's progress callback), and when it ends."""

    def __init__(
        self,
        write: Callable[[], AbstractContextManager[Repository]],
        site: str,
        job: Job,
        counts: Callable[[], dict[str, dict[str, int]]],
        interval: float = 2.0,
    ) -> None:
        self._write = write
        self._site = site
        self._job = job
        self._counts = counts
        self._interval = interval
        self._last = 0.0
        self._lock = threading.Lock()

    def progress(self) -> None:
        with self._lock:
            if time.monotonic() - self._last < self._interval:
                return
            self._last = time.monotonic()
        self.publish("in-progress")

    def finish(self, failed: bool = False) -> None:
        counts = self._counts()
        unfinished = counts[PENDING]["items"] or counts[FAILED]["items"]
        self.publish("failed" if failed or unfinished else "completed")

    def publish(self, status: str) -> None:
        body = task(self._job, self._counts(), status)
        with self._write() as repo:
            repo.site = self._site
            repo.update(body, body["id"])
