"""Canonical forms of the quasi-identifiers, so that spelling variants encode alike.

Names go through: NFKC, casefold, the transliteration table below (letters that do not
decompose, such as ß, ł, ø, and the German umlauts written out as ue/oe/ae), removal of the
remaining combining marks (é -> e, č -> c), then the folding of the digraphs ae/oe/ue to
a/o/u. Folding is the choice made here, over encoding both spellings: it makes Müller,
Mueller and Muller *identical* rather than merely similar, on both sides of every
comparison, whichever way a clerk or a DICOM header wrote it. Its cost is a few collisions
between names that are genuinely different (Michael and Michał both fold to "michal"),
which the other fields then separate. Hyphens, spaces and other punctuation split tokens
("García-López" -> garcia, lopez); apostrophes join (O'Brien -> obrien); particles such as
"van", "de", "von" stay tokens of their own, so a clerk who drops one loses one token only.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

TRANSLITERATION = {
    "ä": "ae",
    "ö": "oe",
    "ü": "ue",
    "ß": "ss",
    "ẞ": "ss",
    "æ": "ae",
    "œ": "oe",
    "ø": "o",
    "å": "a",
    "ł": "l",
    "đ": "d",
    "ð": "d",
    "þ": "th",
    "\u0131": "i",  # dotless i
    "ñ": "n",
    "č": "c",
    "ć": "c",
    "š": "s",
    "ś": "s",
    "ž": "z",
    "ź": "z",
    "ż": "z",
    "ř": "r",
    "ě": "e",
    "ę": "e",
    "ą": "a",
    "ő": "oe",
    "ű": "ue",
}
FOLD = (("ae", "a"), ("oe", "o"), ("ue", "u"))
SEX = {"male": "m", "m": "m", "female": "f", "f": "f", "other": "o", "o": "o"}
_TABLE = str.maketrans(TRANSLITERATION)
_APOSTROPHES = re.compile("['`\u2019\u02bc\u00b4]")  # ' ` and the typographic ones
_SEPARATORS = re.compile(r"[^a-z0-9]+")
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def strip_marks(text: str) -> str:
    """Diacritics gone (é -> e, č -> c): the letters as a site without them would write."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def fold(text: str) -> str:
    """One token or phrase in canonical form: lower-case ASCII letters, digits and spaces."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_TABLE)
    text = strip_marks(text)
    text = _SEPARATORS.sub(" ", _APOSTROPHES.sub("", text))
    for digraph, letter in FOLD:
        text = text.replace(digraph, letter)
    return " ".join(text.split())


def name_tokens(names: Iterable[str]) -> tuple[str, ...]:
    """All tokens of all the names of one kind (given or family), in order."""
    return tuple(token for name in names for token in fold(name).split())


def birth_date(value: str | None) -> tuple[str | None, str | None, str | None]:
    """(year, month, day) of an ISO date, each None where unknown or out of range."""
    match = _DATE.match((value or "").strip())
    if match is None:
        return None, None, None
    year, month, day = match.groups()
    if month is not None and not 1 <= int(month) <= 12:
        month = day = None
    if day is not None and not 1 <= int(day) <= 31:
        day = None
    return year, month, day


def sex(value: str | None) -> str | None:
    """m, f or o; None for unknown or missing (unknown is no evidence either way)."""
    return SEX.get((value or "").strip().casefold())
