"""DICOMweb archive: primage against Orthanc, with the machine's ceilings, in one run.

    apt-get install orthanc orthanc-dicomweb nginx-light   # the peers (Debian packages)
    python bench/dicomweb.py                                # ~1 GB data set, SQLite store
    python bench/dicomweb.py --studies 4 --quick            # a smaller smoke run
    python bench/dicomweb.py --db postgresql                # primage on PostgreSQL

The script re-runs itself inside a private network namespace (`unshare -n`, loopback only),
so Orthanc, which cannot be told to bind 127.0.0.1 alone, is reachable from nowhere else.
PostgreSQL is then reached over its Unix socket.

Data set (cached under --data, default /tmp/primage-bench-dicom): N studies (default 20)
of 2 CT series x 50 slices of 512x512x16 bit (about 525 kB each: 2,000 instances, 1 GB),
and one study of 8,000 small instances for the metadata figure.

Measured for each server with the same httpx client:
  STOW-RS instances/s and MB/s, 1 client (first half of the studies) and 4 clients (second
  half), 10 instances per request; QIDO-RS p50/p95 for common queries; WADO-RS study and
  series retrieval MB/s; frame retrieval requests/s; study metadata latency (100 and 8,000
  instances); and each server's CPU time per request from /proc/PID/stat, the fairer
  figure where one Python client saturates. Ceilings: reading the files from disk, and the
  same files from nginx. Ratios are primage/Orthanc (higher is better for primage), and
  primage/nginx for retrieval.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parent.parent
# This script's folder is first on sys.path, where its name would hide the dicomweb package.
sys.path[0:1] = [str(ROOT), str(ROOT / "bench")]
from ct_slices import slice_dataset  # noqa: E402
from fhir_crud import Clients, free_port, serve_primage, timed  # noqa: E402

ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
NGINX = "/usr/sbin/nginx"
ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
BOUNDARY = "primage-bench-boundary"
PER_REQUEST = 10
TICK = os.sysconf("SC_CLK_TCK")


# --- data set ----------------------------------------------------------------------------------


@dataclass
class Instance:
    path: Path
    study: str
    series: str
    sop: str


def generate(folder: Path, studies: int, small: int) -> tuple[list[list[Instance]], list[Instance]]:
    """The data set, cached in `folder` (a manifest lists it once written completely)."""
    manifest = folder / f"manifest-{studies}-{small}.json"
    if manifest.exists():
        raw = json.loads(manifest.read_text())
        return (
            [[Instance(Path(i[0]), *i[1:]) for i in study] for study in raw["studies"]],
            [Instance(Path(i[0]), *i[1:]) for i in raw["small"]],
        )
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    out: list[list[Instance]] = []
    print(f"generating {studies} studies x 100 CT slices of 512x512 under {folder} ...")
    for s in range(studies):
        study = generate_uid()
        items = []
        for _ in range(2):
            series = generate_uid()
            base = rng.integers(0, 4096, (512, 512), dtype=np.uint16)
            for n in range(1, 51):
                ds = slice_dataset(study, series, n, s, 512, base)
                path = folder / f"{ds.SOPInstanceUID}.dcm"
                ds.save_as(path, enforce_file_format=True)
                items.append(Instance(path, study, series, ds.SOPInstanceUID))
        out.append(items)
    study, series = generate_uid(), generate_uid()
    base = rng.integers(0, 4096, (16, 16), dtype=np.uint16)
    little = []
    for n in range(1, small + 1):
        ds = slice_dataset(study, series, n, 999, 16, base)
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        little.append(Instance(path, study, series, ds.SOPInstanceUID))

    def row(i: Instance) -> list[str]:
        return [str(i.path), i.study, i.series, i.sop]

    manifest.write_text(
        json.dumps(
            {"studies": [[row(i) for i in s] for s in out], "small": [row(i) for i in little]}
        )
    )
    return out, little


# --- servers -----------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    root: str  # DICOMweb base URL
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process and its children (uvicorn workers)."""
        total = 0.0
        for pid in [self.pid, *_children(self.pid)]:
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / TICK
        return total

    def peak_rss_mb(self) -> float:
        peaks = []
        for pid in [self.pid, *_children(self.pid)]:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks.append(int(line.split()[1]) / 1024)
        return max(peaks, default=0.0)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out + [g for c in out for g in _children(c)]


def _pid_on(port: int) -> int:
    """The pid listening on 127.0.0.1:port (from /proc/net/tcp and fd links)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[1].endswith(f":{port:04X}") and parts[3] == "0A":
            inode = parts[9]
    holders = set()
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            if os.readlink(fd) == f"socket:[{inode}]":
                holders.add(int(fd.parts[2]))
    if not holders:
        raise RuntimeError(f"nothing listens on {port}")
    return min(holders)  # uvicorn's master, which started before its workers


@contextlib.contextmanager
def primage(workdir: Path, db: str, workers: int) -> Iterator[Server]:
    data = workdir / "primage"
    data.mkdir()
    url = f"sqlite:///{data}/primage.db"
    if db == "postgresql":
        from sqlalchemy import create_engine, text

        url = "postgresql+psycopg2://postgres@/test?host=/var/run/postgresql"
        schema = f"bench_dicom_{os.getpid()}"
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url += f"&options=-csearch_path%3D{schema}"
        from primage import db as primage_db

        primage_db.upgrade(url)
    try:
        with serve_primage(url, str(data), workers) as base:
            port = int(base.rsplit(":", 1)[1])
            yield Server("primage", f"{base}/dicomweb", _pid_on(port))
    finally:
        if db == "postgresql":
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@contextlib.contextmanager
def orthanc(workdir: Path) -> Iterator[Server]:
    port = free_port()
    folder = workdir / "orthanc"
    folder.mkdir()
    config = {
        "Name": "bench",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpCompressionEnabled": False,
        "StorageCompression": False,
        "Plugins": [ORTHANC_DICOMWEB],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        [ORTHANC, str(folder / "orthanc.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{base}/system", proc)
        yield Server("Orthanc", f"{base}/dicom-web", proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def nginx(workdir: Path, files: Path) -> Iterator[str]:
    port = free_port()
    folder = workdir / "nginx"
    folder.mkdir()
    conf = f"""
daemon off; worker_processes 2; pid {folder}/nginx.pid; error_log {folder}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off; sendfile on; tcp_nopush on;
  client_body_temp_path {folder}; proxy_temp_path {folder}; fastcgi_temp_path {folder};
  uwsgi_temp_path {folder}; scgi_temp_path {folder};
  server {{ listen 127.0.0.1:{port}; root {files}; }}
}}
"""
    (folder / "nginx.conf").write_text(conf)
    proc = subprocess.Popen([NGINX, "-c", str(folder / "nginx.conf")], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _wait(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url}: no answer")


# --- measurements ------------------------------------------------------------------------------


def body(instances: list[Instance]) -> bytes:
    parts = []
    for i in instances:
        parts.append(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        parts.append(i.path.read_bytes())
        parts.append(b"\r\n")
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts)


STOW_HEADERS = {
    "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
    "Accept": "application/dicom+json",
}


def warm_up(server: Server, instances: list[Instance]) -> None:
    """Untimed first requests, so no figure includes a worker's first-use costs."""
    with httpx.Client(timeout=60) as http:
        for _ in range(4):
            r = http.post(f"{server.root}/studies", content=body(instances), headers=STOW_HEADERS)
            r.raise_for_status()


def stow(server: Server, batches: list[list[Instance]], clients: int) -> dict[str, float]:
    """STOW the batches over `clients` threads (bench/fhir_crud.py's runner), 1 request each."""
    http = Clients(server.root)
    errors: list[str] = []
    sizes = [sum(i.path.stat().st_size for i in batch) for batch in batches]

    def send(n: int) -> None:
        r = http.http.post("/studies", content=body(batches[n]), headers=STOW_HEADERS)
        if r.status_code != 200:
            errors.append(f"{r.status_code} {r.text[:200]}")

    cpu = server.cpu_seconds()
    per_second, _ = timed(send, len(batches), clients)
    if errors:
        raise RuntimeError(f"{server.name} STOW failed: {errors[:3]}")
    elapsed = len(batches) / per_second
    count = sum(map(len, batches))
    return {
        "inst_s": count / elapsed,
        "mb_s": sum(sizes) / elapsed / 1e6,
        "cpu_ms_per_inst": (server.cpu_seconds() - cpu) * 1000 / count,
    }


def stow_one_request(server: Server, instances: list[Instance]) -> dict[str, float]:
    """Everything in a single STOW request, streamed from the files: shows whether the
    server streams (its peak RSS) or buffers the body. Re-sends stored instances, so the
    server takes its same-bytes path."""

    def parts() -> Iterator[bytes]:
        for i in instances:
            yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            yield i.path.read_bytes()
            yield b"\r\n"
        yield f"--{BOUNDARY}--\r\n".encode()

    size = sum(i.path.stat().st_size for i in instances)
    start = time.perf_counter()
    with httpx.Client(timeout=3600) as http:
        r = http.post(f"{server.root}/studies", content=parts(), headers=STOW_HEADERS)
    elapsed = time.perf_counter() - start
    if r.status_code != 200:
        raise RuntimeError(f"{server.name} single STOW: {r.status_code} {r.text[:200]}")
    return {"gb": size / 1e9, "mb_s": size / elapsed / 1e6, "peak_rss_mb": server.peak_rss_mb()}


def latency(
    server: Server, fn: Callable[[httpx.Client], httpx.Response], runs: int
) -> dict[str, float]:
    with httpx.Client(timeout=120) as http:
        fn(http)  # warm
        cpu = server.cpu_seconds()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            r = fn(http)
            times.append(time.perf_counter() - start)
            if r.status_code not in (200, 204):  # 204: a search without matches
                raise RuntimeError(f"{server.name}: {r.status_code} {r.text[:200]}")
        cpu_ms = (server.cpu_seconds() - cpu) * 1000 / runs
    times.sort()
    return {
        "p50_ms": statistics.median(times) * 1000,
        "p95_ms": times[int(0.95 * (len(times) - 1))] * 1000,
        "cpu_ms": cpu_ms,
    }


def drain(r: httpx.Response) -> int:
    return sum(len(chunk) for chunk in r.iter_bytes(1 << 20))


def retrieval(server: Server, urls: list[str], accept: str, passes: int = 3) -> dict[str, float]:
    """Median over `passes` of retrieving every URL once, one after another."""
    results = []
    with httpx.Client(timeout=600) as http:
        with http.stream("GET", urls[0], headers={"Accept": accept}) as r:  # warm
            drain(r)
        for _ in range(passes):
            cpu = server.cpu_seconds()
            total = 0
            start = time.perf_counter()
            for url in urls:
                with http.stream("GET", url, headers={"Accept": accept}) as r:
                    if r.status_code != 200:
                        raise RuntimeError(f"{server.name}: {r.status_code} {url}")
                    total += drain(r)
            elapsed = time.perf_counter() - start
            results.append(
                {
                    "mb_s": total / elapsed / 1e6,
                    "cpu_ms": (server.cpu_seconds() - cpu) * 1000 / len(urls),
                    "mb": total / len(urls) / 1e6,
                }
            )
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def frames(server: Server, instances: list[Instance]) -> dict[str, float]:
    with httpx.Client(timeout=60) as http:
        cpu = server.cpu_seconds()
        start = time.perf_counter()
        for i in instances:
            url = f"{server.root}/studies/{i.study}/series/{i.series}/instances/{i.sop}/frames/1"
            r = http.get(url, headers={"Accept": FRAMES})
            if r.status_code != 200 or len(r.content) < 512 * 512 * 2:
                raise RuntimeError(f"{server.name} frame: {r.status_code}")
        elapsed = time.perf_counter() - start
        return {
            "req_s": len(instances) / elapsed,
            "cpu_ms": (server.cpu_seconds() - cpu) * 1000 / len(instances),
        }


def bench_server(
    server: Server,
    studies: list[list[Instance]],
    small: list[Instance],
    runs: int,
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    half = len(studies) // 2

    def batches(group: list[list[Instance]]) -> list[list[Instance]]:
        flat = [i for s in group for i in s]
        return [flat[k : k + PER_REQUEST] for k in range(0, len(flat), PER_REQUEST)]

    warm_up(server, small[:2])
    out["stow_1"] = stow(server, batches(studies[:half]), 1)
    out["stow_4"] = stow(server, batches(studies[half:]), 4)
    out["stow_small_4"] = stow(server, [small[k : k + 100] for k in range(0, len(small), 100)], 4)
    out["stow_peak_rss_mb"] = {"mb": server.peak_rss_mb()}
    out["stow_one"] = stow_one_request(server, [i for s in studies for i in s])
    first, last = studies[0], studies[-1]
    root = server.root
    queries = {
        "qido_patient_id": f"{root}/studies?PatientID=BENCH-003",
        "qido_date_range": f"{root}/studies?StudyDate=20240101-20240331",
        "qido_name_wildcard": f"{root}/studies?PatientName=Bench*&limit=25",
        "qido_modality": f"{root}/studies?ModalitiesInStudy=CT&limit=100",
        "qido_series": f"{root}/studies/{first[0].study}/series",
        "qido_instances": f"{root}/studies/{first[0].study}/series/{first[0].series}/instances",
        "qido_sop_uid": f"{root}/instances?SOPInstanceUID={last[7].sop}",
    }
    meta = {"Accept": "application/dicom+json"}
    for name, url in queries.items():
        out[name] = latency(server, lambda h, u=url: h.get(u, headers=meta), runs)
    out["metadata_100"] = latency(
        server, lambda h: h.get(f"{root}/studies/{first[0].study}/metadata", headers=meta), runs
    )
    out["metadata_8000"] = latency(
        server,
        lambda h: h.get(f"{root}/studies/{small[0].study}/metadata", headers=meta),
        max(3, runs // 5),
    )
    sample = studies[: min(5, len(studies))]
    out["wado_study"] = retrieval(
        server, [f"{root}/studies/{s[0].study}" for s in sample], ANY_SYNTAX
    )
    out["wado_series"] = retrieval(
        server, [f"{root}/studies/{s[0].study}/series/{s[0].series}" for s in sample], ANY_SYNTAX
    )
    out["frames"] = frames(server, [i for s in sample for i in s[:40]])
    return out


def ceilings(studies: list[list[Instance]], workdir: Path, folder: Path) -> dict[str, float]:
    """Medians of 3 passes: reading the sample's files, and fetching them from nginx."""
    sample = studies[: min(5, len(studies))]
    files = [i.path for s in sample for i in s]
    disk, static = [], []
    with nginx(workdir, folder) as base, httpx.Client(timeout=60) as http:
        http.get(f"{base}/{files[0].name}")
        for _ in range(3):
            start = time.perf_counter()
            total = sum(len(p.read_bytes()) for p in files)
            disk.append(total / (time.perf_counter() - start) / 1e6)
            start = time.perf_counter()
            got = 0
            for p in files:
                with http.stream("GET", f"{base}/{p.name}") as r:
                    got += drain(r)
            static.append(got / (time.perf_counter() - start) / 1e6)
    return {"disk_mb_s": statistics.median(disk), "nginx_mb_s": statistics.median(static)}


# --- report ------------------------------------------------------------------------------------

ROWS = [
    ("STOW 1 client, instances/s", "stow_1", "inst_s", True),
    ("STOW 1 client, MB/s", "stow_1", "mb_s", True),
    ("STOW 1 client, server CPU ms/instance", "stow_1", "cpu_ms_per_inst", False),
    ("STOW 4 clients, instances/s", "stow_4", "inst_s", True),
    ("STOW 4 clients, MB/s", "stow_4", "mb_s", True),
    ("STOW 4 clients, server CPU ms/instance", "stow_4", "cpu_ms_per_inst", False),
    ("STOW 8,000 small, 4 clients, instances/s", "stow_small_4", "inst_s", True),
    ("STOW 8,000 small, server CPU ms/instance", "stow_small_4", "cpu_ms_per_inst", False),
    ("server peak RSS during STOW, MB", "stow_peak_rss_mb", "mb", False),
    ("all instances in one STOW request, MB/s", "stow_one", "mb_s", True),
    ("peak RSS after that one request, MB", "stow_one", "peak_rss_mb", False),
    ("QIDO PatientID p50 ms", "qido_patient_id", "p50_ms", False),
    ("QIDO PatientID p95 ms", "qido_patient_id", "p95_ms", False),
    ("QIDO StudyDate range p50 ms", "qido_date_range", "p50_ms", False),
    ("QIDO PatientName wildcard p50 ms", "qido_name_wildcard", "p50_ms", False),
    ("QIDO ModalitiesInStudy p50 ms", "qido_modality", "p50_ms", False),
    ("QIDO study's series p50 ms", "qido_series", "p50_ms", False),
    ("QIDO series' instances (50) p50 ms", "qido_instances", "p50_ms", False),
    ("QIDO series' instances p95 ms", "qido_instances", "p95_ms", False),
    ("QIDO SOPInstanceUID p50 ms", "qido_sop_uid", "p50_ms", False),
    ("metadata, 100-instance study p50 ms", "metadata_100", "p50_ms", False),
    ("metadata, 100-instance study CPU ms", "metadata_100", "cpu_ms", False),
    ("metadata, 8,000-instance study p50 ms", "metadata_8000", "p50_ms", False),
    ("WADO study retrieval MB/s", "wado_study", "mb_s", True),
    ("WADO study retrieval, server CPU ms/study", "wado_study", "cpu_ms", False),
    ("WADO series retrieval MB/s", "wado_series", "mb_s", True),
    ("frames (512x512x16) requests/s", "frames", "req_s", True),
    ("frames, server CPU ms/request", "frames", "cpu_ms", False),
]


def report(
    p: dict[str, dict[str, float]], o: dict[str, dict[str, float]], ceil: dict[str, float]
) -> None:
    print(f"\n{'':46} {'primage':>10} {'Orthanc':>10} {'ratio':>7}")
    for label, key, field, higher_better in ROWS:
        a, b = p[key][field], o[key][field]
        ratio = (a / b if higher_better else b / a) if a and b else float("nan")
        print(f"{label:46} {a:10.2f} {b:10.2f} {ratio:7.2f}")
    print("\n(ratio: how many times better primage is; >= 1.0 means at or above Orthanc)")
    study_mb = p["wado_study"]["mb"]
    print(f"\nceilings (same files, {study_mb:.0f} MB per study):")
    print(f"  read from disk (page cache)      {ceil['disk_mb_s']:10.1f} MB/s")
    print(f"  nginx static files, 1 client      {ceil['nginx_mb_s']:10.1f} MB/s")
    for name in ("wado_study", "wado_series"):
        print(
            f"  primage {name} / nginx        {p[name]['mb_s'] / ceil['nginx_mb_s']:10.2f}"
            f"   (Orthanc {o[name]['mb_s'] / ceil['nginx_mb_s']:.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--small", type=int, default=8000, help="instances in the small study")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--data", type=Path, default=Path("/tmp/primage-bench-dicom"))
    parser.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for tool in (ORTHANC, ORTHANC_DICOMWEB, NGINX):
        if not Path(tool).exists():
            sys.exit(f"{tool} is missing: apt-get install orthanc orthanc-dicomweb nginx-light")
    if not args.in_namespace:
        argv = [sys.executable, *sys.argv, "--in-namespace"]
        script = 'ip link set lo up && exec "$@"'
        os.execvp("unshare", ["unshare", "-n", "--", "sh", "-c", script, "sh", *argv])
    studies, small = generate(args.data, args.studies, args.small)
    size = sum(i.path.stat().st_size for s in studies for i in s) / 1e9
    print(f"data set: {len(studies)} studies, {sum(map(len, studies))} instances, {size:.2f} GB")
    print(f"          + 1 study of {len(small)} small instances; primage on {args.db}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ceil = ceilings(studies, workdir, args.data)
        with primage(workdir, args.db, args.workers) as server:
            print("primage ...", flush=True)
            p = bench_server(server, studies, small, args.runs)
        with orthanc(workdir) as server:
            print("Orthanc ...", flush=True)
            o = bench_server(server, studies, small, args.runs)
    report(p, o, ceil)


if __name__ == "__main__":
    main()
