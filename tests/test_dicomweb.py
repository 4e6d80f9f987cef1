"""The DICOMweb archive end to end: dicomweb-client against the app served by uvicorn."""

from __future__ import annotations

import io

import httpx
import numpy as np
import orjson
import pytest
from dicomweb_client.api import DICOMwebClient
from fhir.resources.R4B.imagingstudy import ImagingStudy
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.encaps import get_frame
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from requests import HTTPError

from tests import dicom_data as data

DICOM_JSON = "application/dicom+json"


@pytest.fixture(scope="module")
def web(live_server: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"{live_server}/dicomweb")


@pytest.fixture(scope="module")
def stored(web: DICOMwebClient) -> dict[str, object]:
    """One study: 3 CT + 2 MR, an RLE CT, a JPEG 2000 MR and a 4-frame NM, for read tests."""
    datasets = data.study(patient_id="PAT-READ", accession="ACC-READ", study_date="20230610")
    uid = datasets[0].StudyInstanceUID
    ct_series, mr_series = datasets[0].SeriesInstanceUID, datasets[-1].SeriesInstanceUID
    compressed = [data.rle(datasets[0]), data.jpeg2000(uid, mr_series, datasets[0])]
    multiframe = data.image(
        uid,
        generate_uid(),
        1,
        modality="NM",
        series_number=3,
        frames=4,
        patient_id="PAT-READ",
        accession="ACC-READ",
        study_date="20230610",
    )
    everything = datasets + compressed + [multiframe]
    response = web.store_instances(everything)
    assert len(response.ReferencedSOPSequence) == len(everything)
    assert "FailedSOPSequence" not in response
    return {
        "study": uid,
        "ct": ct_series,
        "mr": mr_series,
        "datasets": everything,
        "rle": compressed[0],
        "j2k": compressed[1],
        "nm": multiframe,
    }


def _stow(live_server: str, body: bytes) -> httpx.Response:
    """A raw STOW-RS request (for bodies dicomweb-client would not send)."""
    return httpx.post(
        f"{live_server}/dicomweb/studies", content=body, headers={"Content-Type": data.stow_type()}
    )


def _as_stored(web: DICOMwebClient, ds: Dataset) -> Dataset:
    """WADO-RS retrieve of one instance with transfer-syntax=* (as stored)."""
    return web.retrieve_instance(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        media_types=(("application/dicom", "*"),),
    )


def _uids(found: list[dict]) -> set[str]:
    return {d["00080018"]["Value"][0] for d in found}


def _dataset(document: dict) -> Dataset:
    """DICOM JSON with BulkDataURIs as a Dataset (bulk data left empty)."""
    return Dataset.from_json(document, bulk_data_uri_handler=lambda *_: b"")


# --- STOW-RS ----------------------------------------------------------------------------------


def test_stow_response_references_every_instance_with_retrieve_urls(
    web: DICOMwebClient, live_server: str
) -> None:
    datasets = data.study(ct=2, mr=1)
    response = web.store_instances(datasets)
    # dicomweb-client sends "Host: 127.0.0.1" without the port, and URLs follow the Host
    assert response.RetrieveURL.endswith(f"/dicomweb/studies/{datasets[0].StudyInstanceUID}")
    refs = {item.ReferencedSOPInstanceUID: item for item in response.ReferencedSOPSequence}
    assert set(refs) == {ds.SOPInstanceUID for ds in datasets}
    one = datasets[0]
    assert refs[one.SOPInstanceUID].RetrieveURL.endswith(
        f"/studies/{one.StudyInstanceUID}/series/{one.SeriesInstanceUID}"
        f"/instances/{one.SOPInstanceUID}"
    )
    assert refs[one.SOPInstanceUID].ReferencedSOPClassUID == one.SOPClassUID


def test_bad_parts_are_refused_one_by_one_and_the_rest_stored(live_server: str) -> None:
    good = data.study(ct=1, mr=0)[0]
    truncated = data.part10(data.study(ct=1, mr=0)[0])[:-100]
    body = data.multipart([b"this is not DICOM", data.part10(good), truncated])
    r = _stow(live_server, body)
    assert r.status_code == 202
    result = Dataset.from_json(r.json())
    assert [i.ReferencedSOPInstanceUID for i in result.ReferencedSOPSequence] == [
        good.SOPInstanceUID
    ]
    assert [i.FailureReason for i in result.FailedSOPSequence] == [0xC000, 0xC000]
    assert "truncated" in r.headers["Warning"] and "part 1" in r.headers["Warning"]
    found = httpx.get(
        f"{live_server}/dicomweb/instances", params={"StudyInstanceUID": good.StudyInstanceUID}
    )
    assert len(found.json()) == 1


def test_a_request_with_nothing_storable_is_409(live_server: str) -> None:
    body = data.multipart([b"nope", b"DICM" * 10])
    r = _stow(live_server, body)
    assert r.status_code == 409
    assert [i.FailureReason for i in Dataset.from_json(r.json()).FailedSOPSequence] == [
        0xC000,
        0xC000,
    ]


def test_stow_to_a_study_refuses_instances_of_other_studies(live_server: str) -> None:
    ds = data.study(ct=1, mr=0)[0]
    r = httpx.post(
        f"{live_server}/dicomweb/studies/{generate_uid()}",
        content=data.multipart([data.part10(ds)]),
        headers={"Content-Type": data.stow_type()},
    )
    assert r.status_code == 409
    assert Dataset.from_json(r.json()).FailedSOPSequence[0].FailureReason == 0xA900


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/dicom", 415),
        ('multipart/related; type="application/dicom+xml"; boundary=x', 415),
        ('multipart/related; type="application/dicom"', 400),  # no boundary
        ('multipart/related; type="application/dicom"; boundary=another-boundary', 400),
    ],
)
def test_malformed_stow_requests(live_server: str, content_type: str, status: int) -> None:
    body = data.multipart([data.part10(data.study(ct=1, mr=0)[0])])
    r = httpx.post(
        f"{live_server}/dicomweb/studies", content=body, headers={"Content-Type": content_type}
    )
    assert r.status_code == status
    assert r.headers["Warning"].startswith("299 ")


def test_storing_the_same_instance_again_is_idempotent(web: DICOMwebClient) -> None:
    ds = data.study(ct=1, mr=0)[0]
    web.store_instances([ds])
    again = web.store_instances([ds])
    assert again.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert len(web.search_for_instances(ds.StudyInstanceUID)) == 1


def test_other_bytes_under_a_stored_uid_are_refused_by_default(
    web: DICOMwebClient, live_server: str
) -> None:
    ds = data.study(ct=1, mr=0)[0]
    web.store_instances([ds])
    ds.SeriesDescription = "changed"
    r = _stow(live_server, data.multipart([data.part10(ds)]))
    assert r.status_code == 409
    assert Dataset.from_json(r.json()).FailedSOPSequence[0].FailureReason == 0x0111
    assert "different content" in r.headers["Warning"]
    meta = web.retrieve_instance_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    assert _dataset(meta).SeriesDescription == "CT series 1"


def test_replace_policy_replaces_and_frees_the_old_blob(
    app, web: DICOMwebClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.state.archive, "duplicates", "replace")
    monkeypatch.setattr(app.state.archive, "blob_grace", 0)
    ds = data.study(ct=1, mr=0)[0]
    web.store_instances([ds])
    blobs_before = _blob_files(app)
    ds.SeriesDescription = "changed"
    web.store_instances([ds])
    meta = web.retrieve_instance_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    assert _dataset(meta).SeriesDescription == "changed"
    assert len(_blob_files(app)) == len(blobs_before)


def _blob_files(app) -> set[str]:
    root = app.state.settings.blob_path()
    return {p.name for p in root.rglob("*") if p.is_file() and p.parent.name != "tmp"}


def test_refused_parts_leave_no_blob_behind(app, live_server: str) -> None:
    before = _blob_files(app)
    truncated = data.part10(data.study(ct=1, mr=0)[0])[:-10]
    _stow(live_server, data.multipart([truncated, b"junk"]))
    assert _blob_files(app) == before
    assert not list((app.state.settings.blob_path() / "tmp").iterdir())


# --- QIDO-RS ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "fuzzy", "hit"),
    [
        ({"PatientID": "PAT-READ"}, False, True),
        ({"PatientID": "PAT-RE*"}, False, True),
        ({"PatientID": "PAT-RE?D"}, False, True),
        ({"PatientID": "PAT-RE"}, False, False),
        ({"PatientName": "Yamada^Tarou"}, False, True),
        ({"PatientName": "yamada^tarou"}, False, True),
        ({"PatientName": "Yam*"}, False, True),
        ({"PatientName": "Tarou"}, False, False),
        ({"PatientName": "tar"}, True, True),
        ({"PatientName": "Ta Ya"}, True, True),
        ({"PatientName": "Kim"}, True, False),
        ({"StudyDate": "20230610"}, False, True),
        ({"StudyDate": "20230601-20230630"}, False, True),
        ({"StudyDate": "20230611-"}, False, False),
        ({"StudyDate": "-20230610"}, False, True),
        ({"StudyTime": "1000-1100"}, False, True),
        ({"StudyTime": "1016-"}, False, False),
        ({"AccessionNumber": "ACC-READ"}, False, True),
        ({"ModalitiesInStudy": "MR"}, False, True),
        ({"ModalitiesInStudy": "US,NM"}, False, True),
        ({"ModalitiesInStudy": "US"}, False, False),
        ({"ReferringPhysicianName": "hong*"}, False, True),
        ({"00100020": "PAT-READ", "StudyDate": "20230610"}, False, True),
        ({"00100020": "PAT-READ", "StudyDate": "19990101"}, False, False),
    ],
)
def test_study_matching(
    web: DICOMwebClient, stored: dict, filters: dict, fuzzy: bool, hit: bool
) -> None:
    found = web.search_for_studies(search_filters=filters, fuzzymatching=fuzzy)
    uids = {Dataset.from_json(d).StudyInstanceUID for d in found}
    assert (stored["study"] in uids) is hit


def test_study_result_attributes(web: DICOMwebClient, stored: dict, live_server: str) -> None:
    found = web.search_for_studies(
        search_filters={"StudyInstanceUID": stored["study"]}, fields=["Manufacturer"]
    )
    study = Dataset.from_json(found[0])
    assert study.ModalitiesInStudy == ["CT", "MR", "NM"]
    assert study.NumberOfStudyRelatedSeries == 3
    assert study.NumberOfStudyRelatedInstances == 8
    assert study.PatientName == "Yamada^Tarou"
    assert study.Manufacturer == "Synthetic"  # not indexed: taken from stored metadata
    assert study.RetrieveURL.endswith(f"/dicomweb/studies/{stored['study']}")


def test_uid_list_matching(web: DICOMwebClient, stored: dict) -> None:
    other = data.study(ct=1, mr=0)
    web.store_instances(other)
    both = f"{stored['study']},{other[0].StudyInstanceUID}"
    found = web.search_for_studies(search_filters={"StudyInstanceUID": both})
    assert len(found) == 2
    backslash = both.replace(",", "\\")
    assert len(web.search_for_studies(search_filters={"StudyInstanceUID": backslash})) == 2


def test_series_and_instance_levels(web: DICOMwebClient, stored: dict) -> None:
    series = web.search_for_series(stored["study"])
    assert len(series) == 3
    mr = web.search_for_series(stored["study"], search_filters={"Modality": "MR"})
    mr_ds = Dataset.from_json(mr[0])
    assert mr_ds.SeriesInstanceUID == stored["mr"]
    assert mr_ds.NumberOfSeriesRelatedInstances == 3
    everywhere = web.search_for_series(search_filters={"PatientID": "PAT-READ", "Modality": "NM"})
    assert [Dataset.from_json(s).SeriesInstanceUID for s in everywhere] == [
        stored["nm"].SeriesInstanceUID
    ]
    instances = web.search_for_instances(stored["study"], stored["ct"])
    assert len(instances) == 4
    one = web.search_for_instances(
        stored["study"], search_filters={"SOPInstanceUID": stored["nm"].SOPInstanceUID}
    )
    nm = Dataset.from_json(one[0])
    assert nm.NumberOfFrames == 4 and nm.Rows == 32
    assert nm.SeriesInstanceUID == stored["nm"].SeriesInstanceUID
    by_number = web.search_for_instances(
        stored["study"], stored["ct"], search_filters={"InstanceNumber": "2"}
    )
    assert _uids(by_number) == {stored["datasets"][1].SOPInstanceUID}
    all_levels = web.search_for_instances(search_filters={"PatientID": "PAT-READ"})
    assert _uids(all_levels) == {ds.SOPInstanceUID for ds in stored["datasets"]}


def test_includefield_all_and_unknown_attributes(live_server: str, stored: dict) -> None:
    base = f"{live_server}/dicomweb/studies/{stored['study']}/instances"
    r = httpx.get(base, params={"includefield": "all", "limit": "1"})
    assert r.status_code == 200
    assert "00280100" in r.json()[0]
    r = httpx.get(base, params={"NoSuchKeyword": "x"})
    assert r.status_code == 400
    r = httpx.get(base, params={"ImageType": "ORIGINAL"})  # real, but not a matching key
    assert r.status_code == 200 and "ImageType" in r.headers["Warning"]


def test_limit_offset_and_the_truncation_warning(
    app, live_server: str, stored: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{live_server}/dicomweb/instances"
    params = {"PatientID": "PAT-READ"}
    pages = [httpx.get(url, params={**params, "limit": "3", "offset": str(o)}) for o in (0, 3, 6)]
    sizes = [len(p.json()) for p in pages]
    assert sizes == [3, 3, 2]
    assert all("Warning" not in p.headers for p in pages)
    monkeypatch.setattr(app.state.archive, "max_results", 5)
    capped = httpx.get(url, params=params)
    assert len(capped.json()) == 5
    assert "exceeded the maximum" in capped.headers["Warning"]


def test_no_matches_is_204_and_unsupported_options_warn(live_server: str) -> None:
    url = f"{live_server}/dicomweb/studies"
    r = httpx.get(url, params={"PatientID": "nobody-has-this-id"})
    assert r.status_code == 204 and r.content == b""
    r = httpx.get(url, params={"PatientID": "nobody", "emptyvaluematching": "true"})
    assert r.status_code == 204 and "emptyvaluematching" in r.headers["Warning"]


def test_qido_negotiation_and_unknown_study(live_server: str, stored: dict) -> None:
    url = f"{live_server}/dicomweb/studies"
    assert httpx.get(url, headers={"Accept": "application/dicom+xml"}).status_code == 406
    assert httpx.get(url, headers={"Accept": "application/json"}).status_code == 200
    r = httpx.get(f"{url}/{generate_uid()}/series")
    assert r.status_code == 404


# --- WADO-RS ----------------------------------------------------------------------------------


def test_retrieve_instance_as_stored_is_byte_identical(web: DICOMwebClient, stored: dict) -> None:
    rle: Dataset = stored["rle"]
    got = _as_stored(web, rle)
    assert got.file_meta.TransferSyntaxUID == rle.file_meta.TransferSyntaxUID
    buffer = io.BytesIO()
    got.save_as(buffer, enforce_file_format=True)
    assert buffer.getvalue() == data.part10(rle)


def test_explicit_vr_little_endian_is_transcoded_and_the_default(
    web: DICOMwebClient, stored: dict, live_server: str
) -> None:
    j2k: Dataset = stored["j2k"]
    uids = (j2k.StudyInstanceUID, j2k.SeriesInstanceUID, j2k.SOPInstanceUID)
    got = web.retrieve_instance(*uids, media_types=(("application/dicom", ExplicitVRLittleEndian),))
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(got.pixel_array, j2k.pixel_array)
    # PS3.18 8.7.3.5.2: no transfer-syntax parameter means Explicit VR Little Endian
    url = "{}/dicomweb/studies/{}/series/{}/instances/{}".format(live_server, *uids)
    r = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert r.status_code == 200
    assert f"transfer-syntax={ExplicitVRLittleEndian}\r\n".encode() in r.content[:200]


def test_retrieve_study_and_series(web: DICOMwebClient, stored: dict) -> None:
    study = web.retrieve_study(stored["study"], media_types=(("application/dicom", "*"),))
    assert {ds.SOPInstanceUID for ds in study} == {ds.SOPInstanceUID for ds in stored["datasets"]}
    series = web.retrieve_series(stored["study"], stored["mr"])
    assert len(series) == 3


def test_retrieve_in_a_syntax_not_stored_is_406(live_server: str, stored: dict) -> None:
    nm: Dataset = stored["nm"]
    url = (
        f"{live_server}/dicomweb/studies/{nm.StudyInstanceUID}/series/{nm.SeriesInstanceUID}"
        f"/instances/{nm.SOPInstanceUID}"
    )
    jpeg = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    assert httpx.get(url, headers={"Accept": jpeg}).status_code == 406
    assert httpx.get(url, headers={"Accept": "application/zip"}).status_code == 406


def test_metadata_comes_with_bulk_data_uris(
    web: DICOMwebClient, stored: dict, live_server: str
) -> None:
    metadata = web.retrieve_study_metadata(stored["study"])
    assert len(metadata) == len(stored["datasets"])
    nm = next(m for m in metadata if m["00080018"]["Value"][0] == stored["nm"].SOPInstanceUID)
    pixel = nm["7FE00010"]
    assert "InlineBinary" not in pixel
    assert pixel["BulkDataURI"].startswith("http://127.0.0.1")
    assert "/dicomweb/studies/" in pixel["BulkDataURI"]
    assert nm["00083002"]["Value"] == [ExplicitVRLittleEndian]
    assert _dataset(nm).PatientName == "Yamada^Tarou"
    series = web.retrieve_series_metadata(stored["study"], stored["ct"])
    assert len(series) == 4


def test_frames_uncompressed(web: DICOMwebClient, stored: dict) -> None:
    nm: Dataset = stored["nm"]
    frames = web.retrieve_instance_frames(
        nm.StudyInstanceUID,
        nm.SeriesInstanceUID,
        nm.SOPInstanceUID,
        frame_numbers=[1, 3],
        media_types=("application/octet-stream",),
    )
    size = 32 * 32 * 2
    assert frames == [nm.PixelData[:size], nm.PixelData[2 * size : 3 * size]]


def test_frames_compressed_as_stored_and_decoded(web: DICOMwebClient, stored: dict) -> None:
    j2k: Dataset = stored["j2k"]
    uids = (j2k.StudyInstanceUID, j2k.SeriesInstanceUID, j2k.SOPInstanceUID)
    as_stored = web.retrieve_instance_frames(
        *uids, frame_numbers=[1], media_types=(("image/jp2", "1.2.840.10008.1.2.4.90"),)
    )
    assert as_stored == [get_frame(j2k.PixelData, 0, number_of_frames=1)]
    anything = web.retrieve_instance_frames(*uids, frame_numbers=[1])
    assert anything == as_stored
    decoded = web.retrieve_instance_frames(
        *uids, frame_numbers=[1], media_types=("application/octet-stream",)
    )
    assert decoded == [j2k.pixel_array.astype("<i2").tobytes()] or decoded == [
        j2k.pixel_array.tobytes()
    ]


def test_frame_out_of_range_is_404(live_server: str, stored: dict) -> None:
    nm: Dataset = stored["nm"]
    url = (
        f"{live_server}/dicomweb/studies/{nm.StudyInstanceUID}/series/{nm.SeriesInstanceUID}"
        f"/instances/{nm.SOPInstanceUID}/frames/5"
    )
    assert httpx.get(url).status_code == 404


def test_rendered_and_thumbnails(web: DICOMwebClient, stored: dict, live_server: str) -> None:
    nm: Dataset = stored["nm"]
    uids = (nm.StudyInstanceUID, nm.SeriesInstanceUID, nm.SOPInstanceUID)
    jpeg = web.retrieve_instance_rendered(*uids)
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size == (32, 32)
    png = web.retrieve_instance_frames_rendered(
        *uids, frame_numbers=[2], media_types=("image/png",), params={"viewport": "64,64"}
    )
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (64, 64)
    windowed = web.retrieve_instance_rendered(
        *uids, media_types=("image/png",), params={"window": "0,10"}
    )
    assert windowed != web.retrieve_instance_rendered(*uids, media_types=("image/png",))
    base = f"{live_server}/dicomweb/studies/{stored['study']}"
    thumb = httpx.get(f"{base}/thumbnail", headers={"Accept": "image/jpeg"})
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (128, 128)
    gif = httpx.get(f"{base}/thumbnail", headers={"Accept": "image/gif"})
    assert gif.status_code == 406
    color = stored["j2k"]
    assert web.retrieve_instance_rendered(
        color.StudyInstanceUID, color.SeriesInstanceUID, color.SOPInstanceUID
    )


def test_unknown_uids_are_404(web: DICOMwebClient, stored: dict) -> None:
    with pytest.raises(HTTPError) as info:
        web.retrieve_study(generate_uid())
    assert info.value.response.status_code == 404
    with pytest.raises(HTTPError) as info:
        web.retrieve_instance(stored["study"], stored["ct"], generate_uid())
    assert info.value.response.status_code == 404


# --- FHIR ImagingStudy linkage ----------------------------------------------------------------


def test_every_study_has_an_imaging_study(client, stored: dict) -> None:
    r = client.get(f"/fhir/ImagingStudy/{stored['study']}")
    assert r.status_code == 200
    resource = r.json()
    ImagingStudy.model_validate(resource)  # a valid R4B ImagingStudy
    assert resource["identifier"][0] == {
        "system": "urn:dicom:uid",
        "value": f"urn:oid:{stored['study']}",
    }
    assert resource["numberOfSeries"] == 3 and resource["numberOfInstances"] == 8
    assert resource["started"] == "2023-06-10"
    assert {m["code"] for m in resource["modality"]} == {"CT", "MR", "NM"}
    ct = next(s for s in resource["series"] if s["uid"] == stored["ct"])
    assert len(ct["instance"]) == 4
    assert ct["bodySite"]["code"] == "51185008"
    patient = client.get(f"/fhir/{resource['subject']['reference']}").json()
    assert patient["identifier"][0]["value"] == "PAT-READ"
    endpoint = client.get(f"/fhir/{resource['endpoint'][0]['reference']}").json()
    assert endpoint["address"].endswith("/dicomweb")


def test_fhir_search_finds_dicom_studies(client, stored: dict) -> None:
    def ids(query: str) -> set[str]:
        bundle = client.get(f"/fhir/ImagingStudy?{query}").json()
        return {e["resource"]["id"] for e in bundle.get("entry", [])}

    assert stored["study"] in ids("modality=NM")
    assert stored["study"] in ids("patient.identifier=PAT-READ")
    assert stored["study"] in ids("started=2023-06-10")
    assert stored["study"] not in ids("started=2020")
    assert stored["study"] in ids(f"identifier=urn:oid:{stored['study']}")


def test_a_second_study_of_the_patient_links_to_the_same_patient(
    web: DICOMwebClient, client
) -> None:
    first, second = data.study(patient_id="PAT-TWICE"), data.study(patient_id="PAT-TWICE")
    web.store_instances(first)
    web.store_instances(second)
    a = client.get(f"/fhir/ImagingStudy/{first[0].StudyInstanceUID}").json()
    b = client.get(f"/fhir/ImagingStudy/{second[0].StudyInstanceUID}").json()
    assert a["subject"] == b["subject"]


# --- delete -----------------------------------------------------------------------------------


def test_delete_instance_series_and_study(
    app, web: DICOMwebClient, client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.state.archive, "blob_grace", 0)
    datasets = data.study(ct=2, mr=1)
    web.store_instances(datasets)
    uid, ct = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
    blobs_with = _blob_files(app)
    web.delete_instance(uid, ct, datasets[0].SOPInstanceUID)
    assert len(_blob_files(app)) == len(blobs_with) - 1
    study = Dataset.from_json(web.search_for_studies(search_filters={"StudyInstanceUID": uid})[0])
    assert study.NumberOfStudyRelatedInstances == 2
    assert client.get(f"/fhir/ImagingStudy/{uid}").json()["numberOfInstances"] == 2
    web.delete_series(uid, ct)
    study = Dataset.from_json(web.search_for_studies(search_filters={"StudyInstanceUID": uid})[0])
    assert study.ModalitiesInStudy == "MR"
    web.delete_study(uid)
    assert web.search_for_studies(search_filters={"StudyInstanceUID": uid}) == []
    assert client.get(f"/fhir/ImagingStudy/{uid}").status_code == 410
    assert len(_blob_files(app)) == len(blobs_with) - 3
    with pytest.raises(HTTPError) as info:
        web.delete_study(uid)
    assert info.value.response.status_code == 404


def test_cors_is_off_unless_configured(live_server: str) -> None:
    r = httpx.get(f"{live_server}/dicomweb/studies", headers={"Origin": "https://viewer.example"})
    assert "access-control-allow-origin" not in r.headers
    assert isinstance(dcmread, object)


# --- STOW-RS with metadata and bulk data ------------------------------------------------------


def _json_and_bulk(datasets: list[Dataset], boundary: str = "json-bulk") -> tuple[bytes, str]:
    documents, parts = [], []
    for ds in datasets:
        syntax = ds.file_meta.TransferSyntaxUID
        location = f"http://client.example/bulk/{ds.SOPInstanceUID}"

        def handler(element, location=location) -> str:
            return location

        documents.append(ds.to_json_dict(1024, handler))
        if syntax.is_compressed:
            part_type = f"image/jp2; transfer-syntax={syntax}"
            content = get_frame(ds.PixelData, 0, number_of_frames=1)
        else:
            part_type, content = "application/octet-stream", ds.PixelData
        parts.append((part_type, location, content))
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom+json\r\n\r\n".encode()
        + orjson.dumps(documents)
        + b"\r\n"
    )
    for part_type, location, content in parts:
        body += (
            (
                f"--{boundary}\r\nContent-Type: {part_type}\r\nContent-Location: {location}\r\n\r\n"
            ).encode()
            + content
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom+json"; boundary={boundary}'


def test_stow_metadata_with_bulk_data(web: DICOMwebClient, live_server: str) -> None:
    native = data.study(ct=2, mr=0, patient_id="PAT-JSON")
    j2k = data.jpeg2000(native[0].StudyInstanceUID, native[0].SeriesInstanceUID, native[0])
    body, content_type = _json_and_bulk([*native, j2k])
    r = httpx.post(
        f"{live_server}/dicomweb/studies", content=body, headers={"Content-Type": content_type}
    )
    assert r.status_code == 200, r.headers.get("Warning")
    got = _as_stored(web, native[1])
    assert got.PixelData == native[1].PixelData and got.PatientName == "Yamada^Tarou"
    stored_j2k = _as_stored(web, j2k)
    assert stored_j2k.file_meta.TransferSyntaxUID == j2k.file_meta.TransferSyntaxUID
    assert np.array_equal(stored_j2k.pixel_array, j2k.pixel_array)


def test_stow_metadata_naming_a_missing_bulk_part_is_refused(live_server: str) -> None:
    ds = data.study(ct=1, mr=0)[0]
    body, content_type = _json_and_bulk([ds])
    body = body.replace(b"Content-Location: http://client.example/", b"Content-Location: x/")
    r = httpx.post(
        f"{live_server}/dicomweb/studies", content=body, headers={"Content-Type": content_type}
    )
    assert r.status_code == 409
    assert "names no part" in r.headers["Warning"]


def test_stow_body_split_at_every_awkward_place(live_server: str) -> None:
    """A streamed body in 7-byte chunks: boundaries and headers straddle chunk edges."""
    datasets = data.study(ct=2, mr=1)
    payload = data.multipart([data.part10(ds) for ds in datasets])

    def chunks():
        for start in range(0, len(payload), 7):
            yield payload[start : start + 7]

    r = httpx.post(
        f"{live_server}/dicomweb/studies",
        content=chunks(),
        headers={"Content-Type": data.stow_type()},
        timeout=60,
    )
    assert r.status_code == 200
    assert len(Dataset.from_json(r.json()).ReferencedSOPSequence) == 3


def test_a_body_cut_short_keeps_the_whole_parts_and_says_where_it_broke(
    live_server: str,
) -> None:
    datasets = data.study(ct=2, mr=1)
    payload = data.multipart([data.part10(ds) for ds in datasets])
    cut = payload[: payload.rindex(b"--primage-test-boundary\r\n") + 200]  # inside part 3
    r = _stow(live_server, cut)
    assert r.status_code == 202
    result = Dataset.from_json(r.json())
    assert len(result.ReferencedSOPSequence) == 2
    assert [i.FailureReason for i in result.FailedSOPSequence] == [0xC000]
    assert "broke off" in r.headers["Warning"]


# --- review findings: each would fail without its fix ------------------------------------------


def _moved(name: str, like: Dataset) -> Dataset:
    """A pydicom test file moved into `like`'s study, in a new series, with a new SOP UID."""
    from pydicom.data import get_testdata_file

    ds = dcmread(get_testdata_file(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = like.StudyInstanceUID, generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword in data.STUDY_LEVEL:
        setattr(ds, keyword, like.get(keyword))
    return ds


def test_big_endian_instances_transcode_to_little_endian(web: DICOMwebClient) -> None:
    like = data.study(ct=1, mr=0)[0]
    big = _moved("MR_small_bigendian.dcm", like)
    web.store_instances([big])
    got = web.retrieve_instance(
        big.StudyInstanceUID,
        big.SeriesInstanceUID,
        big.SOPInstanceUID,
        media_types=(("application/dicom", ExplicitVRLittleEndian),),
    )
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(got.pixel_array, big.pixel_array)
    assert got.PatientName == like.PatientName


def test_an_unknown_transfer_syntax_is_refused(live_server: str) -> None:
    ds = data.study(ct=1, mr=0)[0]
    raw = data.part10(ds).replace(b"1.2.840.10008.1.2.1\x00", b"1.2.3.4.5.6.7.8.9.10")
    r = _stow(live_server, data.multipart([raw]))
    assert r.status_code == 409
    assert Dataset.from_json(r.json()).FailedSOPSequence[0].FailureReason == 0xC122


def test_no_accept_header_means_the_default_media_type(live_server: str, stored: dict) -> None:
    with httpx.Client() as http:
        del http.headers["accept"]
        base = f"{live_server}/dicomweb/studies/{stored['study']}"
        assert http.get(f"{live_server}/dicomweb/studies").status_code == 200
        assert http.get(f"{base}/metadata").headers["content-type"] == DICOM_JSON
        nm: Dataset = stored["nm"]
        rendered = http.get(
            f"{base}/series/{nm.SeriesInstanceUID}/instances/{nm.SOPInstanceUID}/rendered"
        )
        assert rendered.headers["content-type"] == "image/jpeg"
        assert http.get(base).headers["content-type"].startswith("multipart/related")


def test_a_huge_viewport_region_is_clamped(live_server: str, stored: dict) -> None:
    nm: Dataset = stored["nm"]
    url = (
        f"{live_server}/dicomweb/studies/{nm.StudyInstanceUID}/series/{nm.SeriesInstanceUID}"
        f"/instances/{nm.SOPInstanceUID}/rendered"
    )
    r = httpx.get(url, params={"viewport": "64,64,0,0,60000,60000"})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (64, 64)


def test_non_ascii_in_a_query_key_is_a_400(live_server: str) -> None:
    r = httpx.get(f"{live_server}/dicomweb/studies", params={"Pätient€": "x"})
    assert r.status_code == 400
    assert r.headers["Warning"].isascii()


def test_sequence_bulk_data_stays_inline(web: DICOMwebClient) -> None:
    ds = data.study(ct=1, mr=0)[0]
    icon = Dataset()
    icon.Rows = icon.Columns = 32
    icon.SamplesPerPixel, icon.BitsAllocated, icon.BitsStored, icon.HighBit = 1, 8, 8, 7
    icon.PhotometricInterpretation, icon.PixelRepresentation = "MONOCHROME2", 0
    icon.PixelData = bytes(range(256)) * 4
    ds.IconImageSequence = [icon]
    web.store_instances([ds])
    meta = web.retrieve_instance_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    nested = meta["00880200"]["Value"][0]["7FE00010"]
    assert "InlineBinary" in nested and "BulkDataURI" not in nested
    assert "BulkDataURI" in meta["7FE00010"]


def test_replace_into_another_study_updates_both(
    app, web: DICOMwebClient, client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.state.archive, "duplicates", "replace")
    first = data.study(ct=2, mr=0)
    web.store_instances(first)
    moved = first[1]
    other = data.study(ct=1, mr=0)[0]
    moved.StudyInstanceUID, moved.SeriesInstanceUID = other.StudyInstanceUID, generate_uid()
    web.store_instances([other, moved])
    old = client.get(f"/fhir/ImagingStudy/{first[0].StudyInstanceUID}").json()
    new = client.get(f"/fhir/ImagingStudy/{other.StudyInstanceUID}").json()
    assert old["numberOfInstances"] == 1 and new["numberOfInstances"] == 2


def test_a_body_over_the_limit_is_413(
    app, live_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.state.archive, "max_body_bytes", 10_000)
    big = data.image(generate_uid(), generate_uid(), 1, size=128)  # 32 kB of pixels
    r = _stow(live_server, data.multipart([data.part10(big)]))
    assert r.status_code == 413 and "larger than" in r.headers["Warning"]
