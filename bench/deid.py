"""DICOM de-identification: primage's Annex E engine against `deid` and `dicognito`, same files,
same run.

    .venv/bin/python bench/deid.py              # ~500 files, mostly 512x512 CT
    .venv/bin/python bench/deid.py --files 100  # a smaller smoke run

The corpus (tests/phi_corpus.py, one patient per ~50 files) is written to a temp dir; each tool
reads every file, de-identifies it and writes the result under its base name, as deid does
(primage quarantines what may carry
burned-in text instead of writing it). Throughput is files/s and MB/s of input; primage/tool is how many times faster primage is. Leaks, counted
by one check for all tools on their output of the first patient's files:
  phi        (file, PHI string) pairs found in the output bytes (names in several forms, ids,
             birth and study dates, accession, institution, every original instance UID)
  burned_in  objects that should be quarantined but were written
  unstable   objects whose SOP Instance UID differs between two runs over the same input
  sr_lost    SR documents whose content tree (value types in order) did not survive
Tool settings: deid's default recipe (DeidRecipe()) through replace_identifiers with
remove_private=True; dicognito's Anonymizer with a fixed seed, so it is as stable as it can be.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

# The repo root instead of bench/, where this file would shadow the `deid` package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from deid.config import DeidRecipe  # noqa: E402
from deid.dicom import replace_identifiers  # noqa: E402
from dicognito.anonymizer import Anonymizer  # noqa: E402
from pydicom import dcmread  # noqa: E402

from pseudonymisation.dicom_deid import DicomPlan, Quarantined, deidentify  # noqa: E402
from tests.phi_corpus import Corpus, leaks, make_corpus  # noqa: E402

KEY = b"bench-uid-key-0123456789abcdef01"


def write_corpus(root: Path, files: int) -> tuple[list[Path], Corpus]:
    """Patients of ~50 files each: CT slices, 2 MR, an SR and three captures."""
    paths: list[Path] = []
    first: Corpus | None = None
    patients = max(1, round(files / 50))
    for seed in range(1, patients + 1):
        ct = max(1, files // patients - 6)
        corpus = make_corpus(ct=ct, mr=2, size=512, seed=seed)
        first = first or corpus
        folder = root / f"p{seed:03d}"
        folder.mkdir(parents=True)
        for name, ds in corpus.files.items():
            ds.save_as(folder / name, enforce_file_format=True)
            paths.append(folder / name)
    assert first is not None
    return paths, first


def run_primage(paths: list[Path], out: Path) -> None:
    plans: dict[str, DicomPlan] = {}
    for path in paths:
        ds = dcmread(path)
        patient = str(ds.get("PatientID", ""))
        if patient not in plans:  # the engine adds the object's own names and ids to scrub
            pseudonym = f"R-{len(plans):04d}"
            plans[patient] = DicomPlan(pseudonym, pseudonym, -37, KEY)
        plan = plans[patient]
        try:
            deidentify(ds, plan)
        except Quarantined:
            continue
        ds.save_as(out / path.name)


def run_dicognito(paths: list[Path], out: Path) -> None:
    anonymizer = Anonymizer(seed="bench")
    for path in paths:
        ds = dcmread(path)
        anonymizer.anonymize(ds)
        ds.save_as(out / path.name)


def run_deid(paths: list[Path], out: Path) -> None:
    replace_identifiers(
        [str(p) for p in paths],
        deid=DeidRecipe(),
        save=True,
        overwrite=True,
        output_folder=str(out),
        remove_private=True,
    )


TOOLS: dict[str, Callable[[list[Path], Path], None]] = {
    "primage": run_primage,
    "deid": run_deid,
    "dicognito": run_dicognito,
}


def leak_count(tool: str, corpus: Corpus, first: list[Path], work: Path) -> dict[str, int]:
    """One leak check for every tool, on two runs over the first patient's files."""
    runs = []
    for attempt in ("a", "b"):
        out = work / f"{tool}-leak-{attempt}"
        out.mkdir()
        TOOLS[tool](first, out)
        runs.append({p.name: p for p in out.iterdir()})
    a, b = runs
    phi = sum(len(leaks(p.read_bytes(), corpus.phi)) for p in a.values())
    burned = len(corpus.quarantine & a.keys())
    unstable = sum(
        1
        for name in a.keys() & b.keys()
        if dcmread(a[name]).get("SOPInstanceUID") != dcmread(b[name]).get("SOPInstanceUID")
    )
    tree = [i.ValueType for i in corpus.files["sr.dcm"].ContentSequence]
    sr = dcmread(a["sr.dcm"]) if "sr.dcm" in a else None
    kept = [i.get("ValueType") for i in sr.get("ContentSequence", [])] if sr else []
    texts = (
        [i.get("TextValue") for i in sr.get("ContentSequence", []) if i.get("ValueType") == "TEXT"]
        if sr
        else []
    )
    sr_lost = int(kept != tree or not all(texts))
    return {"phi": phi, "burned_in": burned, "unstable": unstable, "sr_lost": sr_lost}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=500)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="primage-deid-bench-") as tmp:
        work = Path(tmp)
        paths, corpus = write_corpus(work / "in", args.files)
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        first = [p for p in paths if p.parent.name == "p001"]
        print(
            f"corpus: {len(paths)} files, {megabytes:.1f} MB, {len(corpus.phi)} PHI strings per patient"
        )
        results: dict[str, tuple[float, dict[str, int]]] = {}
        for tool in TOOLS:
            out = work / f"{tool}-out"
            out.mkdir()
            start = time.perf_counter()
            TOOLS[tool](paths, out)
            seconds = time.perf_counter() - start
            shutil.rmtree(out)
            results[tool] = (seconds, leak_count(tool, corpus, first, work))
        base = results["primage"][0]
        print(
            f"{'tool':<10} {'files/s':>9} {'MB/s':>8} {'primage/tool':>12} {'phi':>5} {'burned_in':>9} {'unstable':>8} {'sr_lost':>7} {'leaks':>6}"
        )
        for tool, (seconds, found) in results.items():
            print(
                f"{tool:<10} {len(paths) / seconds:>9.1f} {megabytes / seconds:>8.1f} {seconds / base:>12.2f} "
                f"{found['phi']:>5} {found['burned_in']:>9} {found['unstable']:>8} {found['sr_lost']:>7} {sum(found.values()):>6}"
            )


if __name__ == "__main__":
    main()
