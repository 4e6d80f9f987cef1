"""The stored StructureDefinitions, compiled once and kept in step with the store.

Kept in step as fhir_server/derived.py says: only StructureDefinitions that changed are
compiled again. A StructureDefinition the validator cannot use (no url, an
unsupported discriminator) is left out and logged, never a failed write elsewhere.

A site's StructureDefinitions are that site's, like the rest of its data: a site client
validates against (and is offered) the platform's profiles and its own, never another
site's; a caller without a site, all of them. A site's profile never takes a canonical
URL the platform's has: the platform's wins it in every view.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..access import may_see
from ..derived import Derived
from ..errors import FhirError
from .profile import Profile, compile_profile

log = logging.getLogger(__name__)
TYPE = "StructureDefinition"


@dataclass(frozen=True)
class Owned:
    profile: Profile
    site: str | None  # the site that stored it (None: the platform)


class Known:
    """The compiled profiles with their owners; `visible(site)` is what one caller uses."""

    def __init__(self, parts: Iterable[Owned]) -> None:
        self._parts = list(parts)
        self._views: dict[str | None, dict[str, Profile]] = {}
        self.platform = _by_url(p for p in self._parts if p.site is None)

    def visible(self, site: str | None) -> dict[str, Profile]:
        """Profiles by canonical url (also `url|version`) that `site` may use (None: all);
        the same mapping on every call while the store is unchanged."""
        view = self._views.get(site)
        if view is None:
            seen = [p for p in self._parts if may_see(site, p.site)]
            view = self._views.setdefault(site, _by_url(seen))
        return view


class ProfileStore(Derived[Owned, Known]):
    """The stored profiles as of the data a connection sees."""

    def __init__(self) -> None:
        super().__init__((TYPE,), _compile, Known)


def _by_url(parts: Iterable[Owned]) -> dict[str, Profile]:
    out: dict[str, Profile] = {}
    # the latest version by its text wins the bare url, and the platform's over a site's
    for part in sorted(parts, key=lambda p: (p.site is None, str(p.profile.version))):
        profile = part.profile
        out[profile.url] = profile
        if profile.version:
            out[f"{profile.url}|{profile.version}"] = profile
    return out


def _compile(sd: dict[str, Any], site: str | None) -> Owned | None:
    if sd.get("derivation") != "constraint" or not sd.get("differential"):
        return None  # a base definition or a logical model: nothing for this validator
    try:
        return Owned(compile_profile(sd), site)
    except FhirError as exc:
        log.warning("StructureDefinition %s not used for validation: %s", sd.get("url"), exc)
        return None
