"""The archive's storage: extended query tags and their reindex job, S3 blobs, concurrency."""

from __future__ import annotations

import threading
from pathlib import Path

import boto3
import httpx
import pytest
from click.testing import CliRunner
from moto.server import ThreadedMotoServer
from starlette.testclient import TestClient

from dicomweb import instance as parts
from dicomweb.blobs import S3BlobStore
from dicomweb.reindex import reindex_tags
from primage.app import create_app
from primage.cli import main
from primage.settings import Settings
from tests import dicom_data as data


def _stow(client, datasets) -> httpx.Response:
    return client.post(
        "/dicomweb/studies",
        content=data.multipart([data.part10(ds) for ds in datasets]),
        headers={"Content-Type": data.stow_type()},
    )


def test_extended_query_tags_at_stow_and_by_reindex(
    app, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = data.study(ct=2, mr=0, patient_id="PAT-TAGS")
    for ds in before:
        ds.ProtocolName = "NB-STAGING"
    assert _stow(client, before).status_code == 200
    url = "/dicomweb/studies?ProtocolName=NB-STAGING"
    r = client.get(url)
    assert r.status_code == 200 and "ProtocolName" in r.headers["Warning"]  # not yet a key

    monkeypatch.setattr(app.state.archive, "extra_tags", {"ProtocolName": "00181030"})
    assert client.get(url).status_code == 204  # configured, but stored before: not indexed yet
    after = data.study(ct=1, mr=0, patient_id="PAT-TAGS2")
    after[0].ProtocolName = "NB-STAGING"
    assert _stow(client, after).status_code == 200
    assert [s["00100020"]["Value"][0] for s in client.get(url).json()] == ["PAT-TAGS2"]

    steps = list(reindex_tags(app.state.database.write, app.state.archive.extra_tags, batch=2))
    assert steps[-1].done == steps[-1].total
    found = {s["00100020"]["Value"][0] for s in client.get(url).json()}
    assert found == {"PAT-TAGS", "PAT-TAGS2"}
    wildcard = client.get("/dicomweb/series?ProtocolName=NB-*&PatientID=PAT-TAGS")
    assert len(wildcard.json()) == 1
    instances = client.get(f"/dicomweb/studies/{before[0].StudyInstanceUID}/instances")
    assert len(instances.json()) == 2
    tagged = client.get(
        f"/dicomweb/studies/{before[0].StudyInstanceUID}/instances?ProtocolName=OTHER"
    )
    assert tagged.status_code == 204


def test_dicom_reindex_cli(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIMAGE_DATABASE_URL", settings.database())
    monkeypatch.setenv("PRIMAGE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PRIMAGE_SECRET_KEY", "cli")
    result = CliRunner().invoke(main, ["dicom", "reindex"])
    assert result.exit_code != 0 and "names no attributes" in result.output
    monkeypatch.setenv("PRIMAGE_DICOM_EXTRA_QUERY_TAGS", '["ProtocolName"]')
    result = CliRunner().invoke(main, ["dicom", "reindex"])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def s3() -> tuple[str, object]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    client.create_bucket(Bucket="primage")
    yield endpoint, client
    server.stop()


def test_s3_blob_store_round_trip(s3, tmp_path: Path) -> None:
    _, client = s3
    store = S3BlobStore(client, "primage", tmp_path)
    writer = store.writer()
    writer.write(b"DICM" * 1000)
    key = store.commit(writer)
    assert not writer.path.exists()  # the spool file is gone once uploaded
    with store.open(key) as blob:
        assert blob.read() == b"DICM" * 1000
    assert store.read_range(key, 4, 8) == b"DICMDICM"
    store.delete(key)
    with pytest.raises(client.exceptions.NoSuchKey):
        client.get_object(Bucket="primage", Key=f"dicom/{key}")


def test_the_archive_on_s3_end_to_end(s3, database_url: str, tmp_path: Path) -> None:
    endpoint, client = s3
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        secret_key="s3",
        blob_store="s3",
        s3_endpoint_url=endpoint,
        s3_access_key_id="test",
        s3_secret_access_key="test",
        auth_enabled=False,
        identified_data_guard=False,  # plain test data, as in the other archive suites
    )
    app = create_app(settings)
    app.state.archive.blob_grace = 0
    with TestClient(app) as web:
        datasets = data.study(ct=2, mr=1, patient_id="PAT-S3")
        assert _stow(web, datasets).status_code == 200
        objects = client.list_objects_v2(Bucket="primage", Prefix="dicom/")["KeyCount"]
        assert objects >= 3
        one = datasets[0]
        frame = web.get(
            f"/dicomweb/studies/{one.StudyInstanceUID}/series/{one.SeriesInstanceUID}"
            f"/instances/{one.SOPInstanceUID}/frames/1",
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        )
        assert frame.status_code == 200 and one.PixelData in frame.content
        rendered = web.get(
            f"/dicomweb/studies/{one.StudyInstanceUID}/series/{one.SeriesInstanceUID}"
            f"/instances/{one.SOPInstanceUID}/rendered"
        )
        assert rendered.status_code == 200  # pydicom reads (and seeks in) an S3 object
        default = web.get(
            f"/dicomweb/studies/{one.StudyInstanceUID}/series/{one.SeriesInstanceUID}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
        assert default.status_code == 200
        study = web.get(
            f"/dicomweb/studies/{one.StudyInstanceUID}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert study.status_code == 200
        assert all(data.part10(ds)[132:400] in study.content for ds in datasets)
        assert web.delete(f"/dicomweb/studies/{one.StudyInstanceUID}").status_code == 204
        after = client.list_objects_v2(Bucket="primage", Prefix="dicom/")["KeyCount"]
        assert after == objects - 3
    app.state.database.engine.dispose()


@pytest.mark.parametrize("existing", [False, True], ids=["new-study", "existing-study"])
def test_concurrent_stows_into_one_study(live_server: str, existing: bool) -> None:
    """Two clients storing halves of one study at once: both succeed, counts add up (for a
    study already stored too, where no insert conflict serialises the two writers)."""
    datasets = data.study(ct=6, mr=6, patient_id="PAT-RACE")
    if existing:
        first = httpx.post(
            f"{live_server}/dicomweb/studies",
            content=data.multipart([data.part10(datasets[0])]),
            headers={"Content-Type": data.stow_type()},
        )
        assert first.status_code == 200
    halves = [datasets[1::2], datasets[2::2]] if existing else [datasets[::2], datasets[1::2]]
    results: list[int] = []

    def send(part) -> None:
        r = httpx.post(
            f"{live_server}/dicomweb/studies",
            content=data.multipart([data.part10(ds) for ds in part]),
            headers={"Content-Type": data.stow_type()},
            timeout=30,
        )
        results.append(r.status_code)

    threads = [threading.Thread(target=send, args=(half,)) for half in halves]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200, 200]
    study = httpx.get(
        f"{live_server}/dicomweb/studies",
        params={"StudyInstanceUID": datasets[0].StudyInstanceUID},
    ).json()[0]
    assert study["00201208"]["Value"] == [12]
    assert study["00201206"]["Value"] == [2]
    fhir = httpx.get(f"{live_server}/fhir/ImagingStudy/{datasets[0].StudyInstanceUID}").json()
    assert fhir["numberOfInstances"] == 12


def test_cors_for_configured_viewers(database_url: str, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        secret_key="cors",
        cors_origins=["https://viewer.example"],
        auth_enabled=False,
    )
    app = create_app(settings)
    with TestClient(app) as web:
        r = web.get("/dicomweb/studies", headers={"Origin": "https://viewer.example"})
        assert r.headers["access-control-allow-origin"] == "https://viewer.example"
        assert "Warning" in r.headers["access-control-expose-headers"]
        other = web.get("/dicomweb/studies", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    app.state.database.engine.dispose()


def test_garbage_collection_removes_only_unreferenced_old_blobs(
    app, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = app.state.archive
    kept = data.study(ct=1, mr=0)[0]
    assert _stow(client, [kept]).status_code == 200
    writer = archive.blobs.writer()
    writer.write(b"an orphan: no instance row names it")
    orphan = archive.blobs.commit(writer)
    archive.collect_garbage()
    assert orphan in set(archive.blobs.keys())  # younger than the grace period
    monkeypatch.setattr(archive, "blob_grace", 0)
    archive.collect_garbage()
    keys = set(archive.blobs.keys())
    assert orphan not in keys
    meta = client.get(
        f"/dicomweb/studies/{kept.StudyInstanceUID}/series/{kept.SeriesInstanceUID}"
        f"/instances/{kept.SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert meta.status_code == 200  # a referenced blob survives


@pytest.mark.parametrize(
    "shape",
    ["16-bit", "8-bit odd length", "trailing padding", "multi-frame"],
)
def test_the_pixel_layout_of_a_written_file_is_where_a_reader_finds_it(
    shape: str, tmp_path: Path
) -> None:
    """layout_of_written reckons the pixel offset from the file size; a reader must agree."""
    ds = data.image("1.2.3", "1.2.3.4", 1, frames=3 if shape == "multi-frame" else 1)
    if shape == "8-bit odd length":
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 3, 3, 8, 8, 7
        ds.PixelData = bytes(range(9))
    if shape == "trailing padding":  # pixel data is not the last element: read it instead
        ds.add_new(0xFFFCFFFC, "OB", b"\0" * 4)
    path = tmp_path / "written.dcm"
    path.write_bytes(data.part10(ds))
    syntax = str(ds.file_meta.TransferSyntaxUID)
    reckoned = parts.layout_of_written(ds, path.stat().st_size, syntax, path)
    assert reckoned == parts.layout_of_file(path, syntax)
    offset = reckoned["pixel_offset"]
    assert path.read_bytes()[offset : offset + len(ds.PixelData)] == ds.PixelData
