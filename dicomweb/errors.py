"""DICOMweb errors.

DicomWebError         a request-level error: HTTP status + reason (PS3.18 8.5, Warning header)
 ├─ BadRequest          400: a malformed query, path or body
 ├─ NotFound            404: no such study / series / instance / frame
 ├─ NotAcceptable       406: no acceptable media type or transfer syntax
 ├─ UnsupportedMedia    415: STOW body of a media type the service does not take
 └─ Conflict            409: the request's study UID and the body disagree
Failure               one instance refused by STOW: a Failure Reason (0008,1197) code
                      from PS3.4 B.2.3 / PS3.18 Table 10.5.3-2, and a reason for logs
                      and the Warning header; never a value from the instance.
"""

from __future__ import annotations


class DicomWebError(Exception):
    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(DicomWebError):
    status = 400


class Forbidden(DicomWebError):
    status = 403


class NotFound(DicomWebError):
    status = 404


class NotAcceptable(DicomWebError):
    status = 406


class PayloadTooLarge(DicomWebError):
    status = 413


class UnsupportedMedia(DicomWebError):
    status = 415


class Conflict(DicomWebError):
    status = 409


class Failure(Exception):
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NOT_AUTHORIZED = 0x0124  # PS3.7 C.4: refused (identified data, quarantined objects)
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    SYNTAX_NOT_SUPPORTED = 0xC122  # PS3.18 Table 10.5.3-2: Referenced Transfer Syntax
    STUDY_UID_MISMATCH = 0xA900  # PS3.18: the instance's study is not the one in the URL

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    @classmethod
    def cannot_understand(cls, reason: str) -> Failure:
        return cls(cls.CANNOT_UNDERSTAND, reason)

    @classmethod
    def mismatch(cls, reason: str) -> Failure:
        return cls(cls.DATA_SET_DOES_NOT_MATCH, reason)
