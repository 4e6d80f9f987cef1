"""DICOM PS3.15 Annex E: the Basic Application Level Confidentiality Profile with the options
the platform applies, driven by the table in data/annex_e.csv (not by code).

Rules the table does not spell out, chosen so the output stays valid without IOD tables:
- compound actions take the most conservative choice that still keeps a Type 1/2 attribute
  (X/Z -> Z, X/D and Z/D and X/Z/D -> D, X/Z/U* -> U);
- when options disagree on a row, C (clean) wins over K (keep), so a calibration date kept for
  Retain Device Identity is still shifted by Modified Dates;
- attributes the table does not list are kept (as the standard says) unless private; their
  sequences are still walked, so a UID or name nested under them is handled by its own row;
- private attributes are removed except data/safe_private.csv (Retain Safe Private): numeric
  diffusion and scaling values of GE, Siemens and Philips; Siemens CSA headers are left out
  on purpose, they embed free-text protocol fields that can carry names;
- Clean Structured Content is a sixth option, on by default: without it Content Sequence (D)
  could not keep an SR valid. With it an SR keeps its tree and codes, with TEXT cleaned,
  PNAME dummied, dates shifted and UIDREFs remapped;
- rows the project added (source=primage): Text Value (SR TEXT), Unformatted Text Value
  (graphic annotations), and the whole overlay group (60xx), since Overlay Data removed alone
  leaves an invalid Overlay Plane module;
- where an action alone would leave an invalid object or a leak, the `primage` column
  overrides it: Referenced Study Sequence (Type 3) is removed rather than emptied, Institution
  Code Sequence is removed (its code meanings name the institution), a Person Identification
  Code Sequence gets one dummy code; Patient Name/ID come from the plan, and the birth date
  follows the plan's policy under Modified Dates;
- free text is scrubbed of the plan's identifiers and of the object's own names and ids;
- group lengths (gggg,0000) outside the file meta are dropped: the values no longer hold;
- Pixel Data is never read beyond what pydicom already holds.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache, lru_cache
from pathlib import Path

from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from .scrub import Scrubber

DATA = Path(__file__).parent / "data"

# Option name -> (column of data/annex_e.csv, CID 7050 code, its meaning).
OPTIONS: dict[str, tuple[str, str, str]] = {
    "retain_longitudinal_modified_dates": (
        "rtnLongModifDatesOpt",
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "retain_patient_characteristics": (
        "rtnPatCharsOpt",
        "113108",
        "Retain Patient Characteristics Option",
    ),
    "retain_device_identity": ("rtnDevIdOpt", "113109", "Retain Device Identity Option"),
    "clean_descriptors": ("cleanDescOpt", "113105", "Clean Descriptors Option"),
    "retain_safe_private": ("rtnSafePrivOpt", "113111", "Retain Safe Private Option"),
    "clean_structured_content": (
        "cleanStructContOpt",
        "113104",
        "Clean Structured Content Option",
    ),
}
DATES = "retain_longitudinal_modified_dates"
BASIC_CODE = ("113100", "Basic Application Confidentiality Profile")
COMPOUND = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U"}

# SOP classes whose pixels often carry burned-in text: (UID or UID prefix ending in ".", label).
BURNED_IN_CLASSES = (
    ("1.2.840.10008.5.1.4.1.1.7", "Secondary Capture"),
    ("1.2.840.10008.5.1.4.1.1.7.", "Multi-frame Secondary Capture"),
    ("1.2.840.10008.5.1.4.1.1.6.", "Ultrasound"),
    ("1.2.840.10008.5.1.4.1.1.3.1", "Ultrasound Multi-frame"),
)

DUMMY = "ANONYMISED"
DUMMY_BY_VR: dict[str, object] = {
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "AS": "000D",
    "IS": "0",
    "DS": "0",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
}
# The object's own identifying values, scrubbed from free text along with the plan's
# identifiers, so an id only found in e.g. Other Patient IDs Sequence cannot survive in a comment.
HARVEST = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "PatientAddress",
    "PatientTelephoneNumbers",
)
TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
SQ_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")
PIXEL_DATA = 0x7FE00010


class Quarantined(Exception):
    """An object that must not be stored, held for a human to review."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class DicomPlan:
    """What one patient's objects become; built by the gateway from the linkage answer."""

    patient_id: str
    patient_name: str
    date_offset_days: int
    uid_key: bytes
    options: frozenset[str] = frozenset(OPTIONS)
    identifiers: tuple[str, ...] = ()
    birth_date_policy: str = "shift"  # shift | month

    def __post_init__(self) -> None:
        unknown = self.options - OPTIONS.keys()
        if unknown:
            raise ValueError(f"unknown de-identification options: {sorted(unknown)}")
        if self.birth_date_policy not in ("shift", "month"):
            raise ValueError(f"birth_date_policy must be shift or month: {self.birth_date_policy}")


@dataclass(frozen=True)
class Table:
    """The table compiled for one set of options: an action per tag, and group masks."""

    exact: dict[int, str]
    masked: tuple[tuple[int, int, str], ...]
    safe_private: frozenset[tuple[str, int, int]]


def _parse_tag(text: str) -> tuple[int, int]:
    """'(60XX,4000)' -> (mask, value): X digits are wildcards."""
    digits = text.strip("()").replace(",", "")
    mask = int("".join("0" if c in "Xx" else "F" for c in digits), 16)
    return mask, int(digits.replace("X", "0").replace("x", "0"), 16)


@cache
def _rows() -> tuple[dict[str, str], ...]:
    with open(DATA / "annex_e.csv", newline="", encoding="utf-8") as f:
        return tuple(csv.DictReader(f))


@cache
def _safe_private() -> frozenset[tuple[str, int, int]]:
    """(private creator, group, element low byte) of the safe-list."""
    with open(DATA / "safe_private.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return frozenset((r["creator"], int(r["tag"][1:5], 16), int(r["tag"][8:10], 16)) for r in rows)


def _action(row: dict[str, str], options: frozenset[str]) -> str:
    if row["primage"]:
        return row["primage"]
    chosen = {row[OPTIONS[o][0]] for o in options} - {""}
    if chosen:
        return "C" if "C" in chosen else "K"
    return COMPOUND.get(row["basic"], row["basic"])


@cache
def compile_table(options: frozenset[str]) -> Table:
    """Once per options set: the per-element lookup is a dict hit, not a table scan."""
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, str]] = []
    private = "X"
    for row in _rows():
        action = _action(row, options)
        if row["tag"].startswith("(GGGG"):
            private = action
            continue
        mask, value = _parse_tag(row["tag"])
        if mask == 0xFFFFFFFF:
            exact[value] = action
        else:
            masked.append((mask, value, action))
    safe = _safe_private() if private == "C" else frozenset()
    return Table(exact, tuple(masked), safe)


@lru_cache(maxsize=1 << 16)  # bounded: a gateway runs for months
def _remap(uid: str, key: bytes) -> str:
    digest = hmac.new(key, uid.encode("ascii", "replace"), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def remap_uid(uid: str, key: bytes) -> str:
    """`2.25.` + a 128-bit keyed hash: the same UID and key give the same UID, in any role."""
    uid = uid.strip("\0 ")
    return _remap(uid, key) if uid else uid


@lru_cache(maxsize=1 << 14)
def _shift_da(value: str, days: int) -> str:
    value = value.strip()
    if not value:
        return value
    try:
        year = int(value[:4])
        month = int(value[4:6]) if len(value) >= 6 else 1
        day = int(value[6:8]) if len(value) >= 8 else 1
        moved = date(year, month, day) + timedelta(days=days)
    except ValueError:
        return str(DUMMY_BY_VR["DA"])
    return f"{moved:%Y%m%d}"[: len(value[:8])]


def shift_dicom_date(value: str, days: int) -> str:
    """A DA or DT value moved by `days` (DT: time, fraction and UTC offset kept)."""
    return _shift_dt(value, days)


def _shift_dt(value: str, days: int) -> str:
    """The date part moved; time, fraction and UTC offset kept."""
    digits = 0
    while digits < min(8, len(value)) and value[digits].isdigit():
        digits += 1
    return _shift_da(value[:digits], days) + value[digits:]


def _values(elem: DataElement) -> list:
    value = elem.value
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, MultiValue | list) else [value]


def _set(elem: DataElement, values: list) -> None:
    elem.value = values[0] if len(values) == 1 else values


def _text(value: object) -> str:
    """A private creator's name, also when read as UN bytes."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip("\0 ")


@lru_cache(maxsize=256)
def _scrubber(identifiers: tuple[str, ...]) -> Scrubber:
    return Scrubber(identifiers)


def _identifiers(ds: Dataset) -> list[str]:
    found: list[str] = []
    for item in [ds, *ds.get("OtherPatientIDsSequence", [])]:
        for keyword in HARVEST:
            value = item.get(keyword)
            if value not in (None, ""):
                found += [str(v) for v in value] if isinstance(value, MultiValue) else [str(value)]
    return found


class _Walker:
    """One recursive pass over a dataset with the compiled table of one plan."""

    def __init__(self, plan: DicomPlan, ds: Dataset) -> None:
        self.plan = plan
        self.table = compile_table(plan.options)
        self.days = plan.date_offset_days if DATES in plan.options else None
        identifiers = tuple(sorted({*plan.identifiers, *_identifiers(ds)}))
        self.scrub = _scrubber(identifiers).clean
        self.apply: dict[str, Callable[[Dataset, int], None]] = {
            "X": self._remove,
            "Z": self._empty,
            "D": self._dummy,
            "K": self._keep,
            "C": self._clean,
            "U": self._uid,
            "pseudonym_name": self._name,
            "pseudonym_id": self._id,
            "birth_date": self._birth_date,
            "dummy_code": self._dummy_code,
        }

    def walk(self, ds: Dataset) -> None:
        exact, masked = self.table.exact, self.table.masked
        private: list[int] = []
        for tag in list(ds.keys()):
            if tag & 0x10000:
                private.append(tag)
                continue
            if not tag & 0xFFFF:
                del ds[tag]  # a group length
                continue
            action = exact.get(tag)
            if action is None:
                action = next((a for m, v, a in masked if tag & m == v), None)
            if action is not None:
                self.apply[action](ds, tag)
            elif tag != PIXEL_DATA and self._is_sequence(ds, tag):
                self._recurse(ds[tag])
        if private:
            self._private(ds, private)

    @staticmethod
    def _is_sequence(ds: Dataset, tag: int) -> bool:
        raw = ds.get_item(tag)
        vr = raw.VR if raw is not None else None
        return vr == "SQ" or (vr in (None, "UN") and tag in SQ_TAGS)

    def _recurse(self, elem: DataElement) -> None:
        if elem.VR == "SQ":
            for item in elem.value:
                self.walk(item)

    def _private(self, ds: Dataset, tags: list[int]) -> None:
        """Removed unless the safe-list names (creator, group, element) and the option is on."""
        safe = self.table.safe_private
        keep: set[int] = set()
        if safe:
            creators = {
                (t >> 16, t & 0xFF): _text(ds[t].value) for t in tags if 0x10 <= t & 0xFFFF <= 0xFF
            }
            for t in tags:
                group, block = t >> 16, (t >> 8) & 0xFF
                creator = creators.get((group, block))
                if block >= 0x10 and (creator, group, t & 0xFF) in safe:
                    keep |= {t, (group << 16) | block}
        for t in tags:
            if t not in keep:
                del ds[t]

    def _remove(self, ds: Dataset, tag: int) -> None:
        del ds[tag]

    def _empty(self, ds: Dataset, tag: int) -> None:
        elem = ds[tag]
        elem.value = empty_value_for_VR(elem.VR)

    def _keep(self, ds: Dataset, tag: int) -> None:
        if tag != PIXEL_DATA and self._is_sequence(ds, tag):
            self._recurse(ds[tag])

    def _uid(self, ds: Dataset, tag: int) -> None:
        elem = ds[tag]
        if elem.VR == "SQ":
            self._recurse(elem)
        elif elem.VR == "UI":
            key = self.plan.uid_key
            _set(elem, [remap_uid(str(v), key) for v in _values(elem)])
        else:
            self._dummy(ds, tag)

    def _dummy(self, ds: Dataset, tag: int) -> None:
        elem = ds[tag]
        vr = elem.VR
        if vr == "SQ":
            self._recurse(elem)
        elif vr == "UI":
            self._uid(ds, tag)
        elif vr in ("DA", "DT") and self.days is not None:
            self._clean(ds, tag)
        elif vr in TEXT_VRS:
            elem.value = DUMMY
        elif vr in DUMMY_BY_VR:
            elem.value = DUMMY_BY_VR[vr]
        else:
            elem.value = empty_value_for_VR(vr)

    def _clean(self, ds: Dataset, tag: int) -> None:
        elem = ds[tag]
        vr = elem.VR
        if vr == "SQ":
            self._recurse(elem)
        elif vr == "DA" or vr == "DT":
            if self.days is None:
                elem.value = DUMMY_BY_VR[vr]
                return
            shift = _shift_da if vr == "DA" else _shift_dt
            _set(elem, [shift(str(v), self.days) for v in _values(elem)])
        elif vr == "UI":
            self._uid(ds, tag)
        elif vr in TEXT_VRS:
            _set(elem, [self.scrub(str(v)) for v in _values(elem)])

    def _name(self, ds: Dataset, tag: int) -> None:
        ds[tag].value = self.plan.patient_name

    def _id(self, ds: Dataset, tag: int) -> None:
        ds[tag].value = self.plan.patient_id

    def _dummy_code(self, ds: Dataset, tag: int) -> None:
        """A code sequence whose codes are a person's ids: one dummy code keeps it Type 1."""
        ds[tag].value = Sequence([_code(DUMMY, "99PRIMAGE", DUMMY)])

    def _birth_date(self, ds: Dataset, tag: int) -> None:
        elem = ds[tag]
        value = str(elem.value or "")
        if self.days is None or len(value) < 8:
            elem.value = ""
            return
        shifted = _shift_da(value, self.days)
        elem.value = shifted[:6] + "01" if self.plan.birth_date_policy == "month" else shifted


def check_burned_in(ds: Dataset) -> None:
    """Raises Quarantined for objects whose pixels may show the patient's name or id."""
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        raise Quarantined("BurnedInAnnotation is YES: pixel data carries identifying text")
    if flag == "NO":
        return
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if not sop_class and hasattr(ds, "file_meta"):
        sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    for uid, label in BURNED_IN_CLASSES:
        if sop_class == uid or (uid.endswith(".") and sop_class.startswith(uid)):
            raise Quarantined(
                f"{label} ({sop_class}) often has burned-in text and is not flagged "
                "BurnedInAnnotation NO"
            )


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _method_codes(options: frozenset[str]) -> Sequence:
    codes = [BASIC_CODE] + [OPTIONS[o][1:] for o in OPTIONS if o in options]
    return Sequence([_code(value, "DCM", meaning) for value, meaning in codes])


def deidentify(ds: Dataset, plan: DicomPlan) -> Dataset:
    """De-identifies `ds` in place and returns it; raises Quarantined first if it must not pass."""
    check_burned_in(ds)
    _Walker(plan, ds).walk(ds)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "primage PS3.15 Annex E"
    ds.DeidentificationMethodCodeSequence = _method_codes(plan.options)
    if DATES in plan.options:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds
