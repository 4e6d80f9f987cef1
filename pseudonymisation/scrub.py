"""Free text with the identifying bits taken out: what Clean Descriptors and the FHIR policy's
`scrub` do to descriptions, comments and notes.

Names and ids are only known when the request carries them (the Patient or DICOM header of
the same child); e-mail addresses, phone numbers, long digit runs and dates are removed by
pattern whatever the request. Matching ignores case and diacritics, so "MULLER" and
"Müller" both go.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .normalise import strip_marks

MASK = "***"
_PATTERNS = [
    r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",  # e-mail
    r"\+?\d[\d ()/.-]{6,}\d",  # phone numbers, long ids
    r"\b\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b",  # dates as people write them
    r"\b\d{8}\b",  # DICOM-style dates, 8-digit ids
]


def fold(text: str) -> str:
    """Lower case without diacritics, one character per input character where possible."""
    return strip_marks(text).casefold()


class Scrubber:
    def __init__(self, identifiers: Iterable[str] = ()) -> None:
        # each word, and each part of a double name (Müller-Lüdenscheidt: Müller alone too)
        parts = [w for i in identifiers for w in re.split(r"[\s^,]+", i)]
        parts += [p for w in parts if "-" in w for p in w.split("-") if p.isalpha()]
        words = sorted({fold(w) for w in parts if len(w) >= 2}, key=len, reverse=True)
        pattern = "|".join([*_PATTERNS, *(rf"\b{re.escape(w)}\b" for w in words)])
        self._regex = re.compile(pattern, re.IGNORECASE)
        self.knows_names = bool(words)

    def clean(self, text: str) -> str:
        if not self.knows_names:
            return self._regex.sub(MASK, text)
        folded = fold(text)
        if len(folded) != len(text):  # a ligature expanded: match on the text itself
            return self._regex.sub(MASK, text)
        out, last = [], 0
        for match in self._regex.finditer(folded):
            out += [text[last : match.start()], MASK]
            last = match.end()
        out.append(text[last:])
        return "".join(out)
