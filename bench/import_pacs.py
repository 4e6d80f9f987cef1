"""PACS import: `primage import pacs` (C-MOVE) against dcmtk's C-MOVE ceiling, in one run.

    apt-get install dcmtk                              # the PACS and the ceiling (`make test` does)
    python bench/import_pacs.py                        # 2,000 CT slices of 512x512x16 bit (~1 GB)
    python bench/import_pacs.py --instances 1000 --workers 1 4

The script re-runs itself inside a private network namespace (`unshare -n`, loopback only),
so dcmqrscp, which cannot be told to bind 127.0.0.1 alone, is reachable from nowhere else.

Data set (cached under --data, default /tmp/primage-bench-pacs): studies of 2 CT series x 100
slices of 512x512x16 bit (about 525 kB each), two studies a patient, loaded into a dcmqrscp
with storescu. All dcmtk tools run with TCP_NODELAY=1 (without it dcmtk waits for delayed
ACKs, 40 ms a message).

Measured, every figure over the whole data set, study by study as the importer works:
  ceiling: dcmtk `movescu` C-MOVE of each study into dcmtk `storescp` writing plain files;
  primage: `primage import pacs` (C-ECHO, C-FINDs, ledger, C-MOVE into its own storage SCP,
  STOW-RS in batches of --batch to `primage serve` on SQLite with OAuth2, the gateway
  pseudonymising as a site's client) with --workers STOWs in flight, each run against a
  fresh platform. Instances/s, MB/s, the ratio to the ceiling and the importer's CPU time.
For reference, to see which side limits: the importer's C-MOVE side alone (PacsSource.fetch
in this process, nothing sent), and `primage import folder` of the same files (the
platform's side alone: STOW-RS, pseudonymisation, storage).
Target (issue #8): >= 70 % of the ceiling, pseudonymisation included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parent.parent
sys.path[0:1] = [str(ROOT), str(ROOT / "bench")]
from ct_slices import slice_dataset  # noqa: E402
from fhir_crud import free_port, serve_primage  # noqa: E402

PACS_AE, IMPORTER_AE, CEILING_AE, LOADER_AE = "BENCHPACS", "PRIMAGE", "CEILING", "LOADER"
PER_STUDY = 200  # 2 series x 100 slices
NODELAY = {**os.environ, "TCP_NODELAY": "1"}
SITE = "BENCH-HOSPITAL"


# --- data set ----------------------------------------------------------------------------------


def generate(folder: Path, instances: int) -> list[str]:
    """The data set's study UIDs; the files cached in `folder` (a manifest once complete)."""
    manifest = folder / f"manifest-{instances}.json"
    if manifest.exists():
        return list(json.loads(manifest.read_text())["studies"])
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "dicom").mkdir(parents=True)
    rng = np.random.default_rng(7)
    print(f"generating {instances} CT slices of 512x512 under {folder} ...", flush=True)
    studies = []
    made = 0
    while made < instances:
        study = generate_uid()
        studies.append(study)
        patient = len(studies) // 2
        for series in (1, 2):
            uid = generate_uid()
            base = rng.integers(0, 4096, (512, 512), dtype=np.uint16)
            for n in range(1, PER_STUDY // 2 + 1):
                if made == instances:
                    break
                ds = slice_dataset(study, uid, n, patient, 512, base)
                ds.SeriesNumber = series
                ds.save_as(folder / "dicom" / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
                made += 1
    manifest.write_text(json.dumps({"studies": studies}))
    return studies


# --- the PACS and the ceiling ------------------------------------------------------------------


@contextlib.contextmanager
def dcmqrscp(workdir: Path, ports: dict[str, int]) -> Iterator[int]:
    store = workdir / "pacs"
    store.mkdir()
    hosts = "\n".join(f"{ae.lower()} = ({ae}, 127.0.0.1, {port})" for ae, port in ports.items())
    port = free_port()
    (workdir / "dcmqrscp.cfg").write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 131072\nMaxAssociations = 16\n\n"
        f"HostTable BEGIN\n{hosts}\nlocal = {', '.join(a.lower() for a in ports)}\n"
        "HostTable END\n\nVendorTable BEGIN\nVendorTable END\n\n"
        f"AETable BEGIN\n{PACS_AE} {store} RW (500, 1024mb) local\nAETable END\n"
    )
    cmd = ["dcmqrscp", "-c", str(workdir / "dcmqrscp.cfg"), "-dhl", str(port)]
    with (workdir / "dcmqrscp.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, env=NODELAY, stdout=log, stderr=log)
    try:
        for _ in range(100):
            echo = subprocess.run(
                ["echoscu", "-aet", LOADER_AE, "-aec", PACS_AE, "127.0.0.1", str(port)],
                capture_output=True,
            )
            if echo.returncode == 0:
                break
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def ceiling(workdir: Path, pacs: int, port: int, studies: list[str]) -> dict[str, float]:
    """movescu C-MOVE of every study, one after the other, into storescp writing files."""
    out = workdir / "ceiling"
    out.mkdir()
    receiver = subprocess.Popen(
        ["storescp", "-aet", CEILING_AE, "-od", str(out), str(port)],
        env=NODELAY,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        mover = ["movescu", "-S", "-aet", LOADER_AE, "-aec", PACS_AE, "-aem", CEILING_AE]
        start = time.perf_counter()
        for study in studies:
            keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
            subprocess.run(
                [*mover, *keys, "127.0.0.1", str(pacs)],
                env=NODELAY,
                check=True,
                capture_output=True,
            )
        elapsed = time.perf_counter() - start
    finally:
        receiver.terminate()
        receiver.wait(timeout=20)
    received = sum(1 for p in out.iterdir() if p.is_file())
    shutil.rmtree(out)
    return {"instances": received, "seconds": elapsed, "cpu": 0.0}


# --- primage -----------------------------------------------------------------------------------


def add_site_client(env: dict[str, str]) -> tuple[str, str]:
    args = [sys.executable, "-m", "primage.cli", "clients", "add", "bench-hospital"]
    args += ["--scope", "system/ImagingStudy.c", "--site", SITE]
    out = subprocess.run(
        args, env={**os.environ, **env}, cwd=ROOT, check=True, capture_output=True, text=True
    )
    made = json.loads(out.stdout)
    return made["client_id"], made["client_secret"]


def primage_import(
    workdir: Path, label: str, source: list[str], workers: int, batch: int, server_workers: int
) -> dict[str, float]:
    """`primage import SOURCE...` into a fresh `primage serve`, as a site's client."""
    data = workdir / f"platform-{label}"
    data.mkdir()
    url = f"sqlite:///{data}/primage.db"
    env = {"PRIMAGE_DATABASE_URL": url, "PRIMAGE_DATA_DIR": str(data)}
    with serve_primage(url, str(data), server_workers, auth=True) as base:
        client_id, secret = add_site_client(env)
        edge = workdir / f"edge-{label}"
        report = edge / "report.json"
        cmd = [sys.executable, "-m", "primage.cli", "import", *source, "--to", f"{base}/dicomweb"]
        cmd += ["--workers", str(workers), "--batch", str(batch), "--report", str(report)]
        importer_env = {
            **os.environ,
            "PRIMAGE_DATA_DIR": str(edge),
            "PRIMAGE_IMPORT_CLIENT_ID": client_id,
            "PRIMAGE_IMPORT_CLIENT_SECRET": secret,
            "PRIMAGE_LOG_LEVEL": "WARNING",
        }
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(cmd, env=importer_env, cwd=ROOT, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
        summary = json.loads(report.read_text())
        if summary["status"] != "done":
            raise RuntimeError(json.dumps(summary["counts"]))
    return {
        "instances": summary["counts"]["stored"]["items"],
        "seconds": elapsed,
        "cpu": (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime),
    }


def receive_only(pacs: int, scp_port: int) -> dict[str, float]:
    """The importer's DIMSE side alone: PacsSource.fetch of everything, nothing sent."""
    from curation.ledger import PENDING, Item
    from curation.pacs import PacsSource, Selection

    source = PacsSource(
        "127.0.0.1",
        pacs,
        PACS_AE,
        IMPORTER_AE,
        Selection(date_from="20000101"),
        scp_port=scp_port,
        scp_bind="127.0.0.1",
    )
    items = [Item(i.key, i.group, i.locator, 0, PENDING, None) for i in source.listing()]
    cpu = time.process_time()
    start = time.perf_counter()
    received = sum(1 for _, data in source.fetch(items) if isinstance(data, bytes))
    return {
        "instances": received,
        "seconds": time.perf_counter() - start,
        "cpu": time.process_time() - cpu,
    }


# --- report ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4], help="STOWs in flight")
    parser.add_argument("--batch", type=int, default=16, help="instances per STOW")
    parser.add_argument("--server-workers", type=int, default=2, help="primage serve --workers")
    parser.add_argument("--data", type=Path, default=Path("/tmp/primage-bench-pacs"))
    parser.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for tool in ("dcmqrscp", "storescu", "movescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install dcmtk (or make test)")
    if not args.in_namespace:
        argv = [sys.executable, *sys.argv, "--in-namespace"]
        script = 'ip link set lo up && exec "$@"'
        os.execvp("unshare", ["unshare", "-n", "--", "sh", "-c", script, "sh", *argv])
    studies = generate(args.data, args.instances)
    files = list((args.data / "dicom").iterdir())
    size = sum(p.stat().st_size for p in files)
    print(f"data set: {len(studies)} studies, {len(files)} instances, {size / 1e6:.0f} MB")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ports = {IMPORTER_AE: free_port(), CEILING_AE: free_port(), LOADER_AE: free_port()}
        with dcmqrscp(workdir, ports) as pacs:
            start = time.perf_counter()
            loader = ["storescu", "-q", "-aet", LOADER_AE, "-aec", PACS_AE, "+sd"]
            subprocess.run([*loader, "127.0.0.1", str(pacs), str(args.data / "dicom")], env=NODELAY)
            print(f"loaded into dcmqrscp with storescu in {time.perf_counter() - start:.1f} s")
            print("ceiling: movescu -> storescp ...", flush=True)
            results["dcmtk movescu -> storescp"] = ceiling(
                workdir, pacs, ports[CEILING_AE], studies
            )
            pacs_args = ["pacs", "--host", "127.0.0.1", "--port", str(pacs)]
            pacs_args += ["--called-ae", PACS_AE, "--calling-ae", IMPORTER_AE]
            pacs_args += ["--scp-port", str(ports[IMPORTER_AE]), "--scp-bind", "127.0.0.1"]
            pacs_args += ["--date-from", "2000-01-01"]
            for workers in args.workers:
                print(f"primage import pacs, {workers} STOWs in flight ...", flush=True)
                results[f"primage import pacs, workers {workers}"] = primage_import(
                    workdir, f"pacs-{workers}", pacs_args, workers, args.batch, args.server_workers
                )
            print("for reference: the importer's C-MOVE side alone, and the platform's", flush=True)
            results["(C-MOVE receive only, no STOW)"] = receive_only(pacs, ports[IMPORTER_AE])
        workers = max(args.workers)
        results[f"(import folder, workers {workers})"] = primage_import(
            workdir,
            "folder",
            ["folder", str(args.data / "dicom")],
            workers,
            args.batch,
            args.server_workers,
        )
    ceil = results["dcmtk movescu -> storescp"]
    print(f"\n{len(files)} instances, {size / 1e6:.0f} MB; 2-core figures, one run each")
    print(f"{'':34} {'inst/s':>8} {'MB/s':>7} {'seconds':>8} {'ratio':>6} {'importer CPU s':>15}")
    for label, r in results.items():
        rate = r["instances"] / r["seconds"]
        ratio = rate / (ceil["instances"] / ceil["seconds"])
        cpu = f"{r['cpu']:15.1f}" if r["cpu"] else f"{'':>15}"
        print(
            f"{label:34} {rate:8.1f} {size / 1e6 / r['seconds']:7.1f} {r['seconds']:8.1f}"
            f" {ratio:6.2f} {cpu}"
        )
        if r["instances"] != len(files):
            print(f"  ! {r['instances']} of {len(files)} instances")
    print("\n(target: primage >= 0.70 of the ceiling, pseudonymisation included)")


if __name__ == "__main__":
    main()
