"""The stored StructureDefinitions, compiled once and kept in step with the store.

Kept in step as fhir_server/derived.py says: only StructureDefinitions that changed are
compiled again. A StructureDefinition the validator cannot use (no url, an
unsupported discriminator) is left out and logged, never a failed write elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from ..derived import Derived
from ..errors import FhirError
from .profile import Profile, compile_profile

log = logging.getLogger(__name__)
TYPE = "StructureDefinition"


class ProfileStore(Derived[Profile, dict[str, Profile]]):
    """Profiles by canonical url (also `url|version`), as of the data a connection sees."""

    def __init__(self) -> None:
        super().__init__((TYPE,), _compile, _by_url)


def _by_url(profiles: Iterable[Profile]) -> dict[str, Profile]:
    out: dict[str, Profile] = {}
    for profile in sorted(profiles, key=lambda p: str(p.version)):
        out[profile.url] = profile  # the latest version by its text wins the bare url
        if profile.version:
            out[f"{profile.url}|{profile.version}"] = profile
    return out


def _compile(sd: dict[str, Any], _site: str | None) -> Profile | None:
    if sd.get("derivation") != "constraint" or not sd.get("differential"):
        return None  # a base definition or a logical model: nothing for this validator
    try:
        return compile_profile(sd)
    except FhirError as exc:
        log.warning("StructureDefinition %s not used for validation: %s", sd.get("url"), exc)
        return None
