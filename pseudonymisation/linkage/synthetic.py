"""Seeded synthetic European children registered at several sites, with recording errors.

Made to be hard in the ways real registries are: names with diacritics that some sites
drop or transliterate, double given and family names that some sites truncate, typos,
day and month swapped, a wrong digit in the date, missing sex or place. And people who are
easily confused: twins (same family name and date of birth, another given name, sometimes
the same sex), namesakes born a few days or months apart, and a few pairs with identical
quasi-identifiers, which no linkage can tell apart. Each person is registered by one to
three contexts (sites in their country or trials), never twice by the same context.
Names come from a few hundred per country (`synthetic_names`), drawn with a realistic skew.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import date, timedelta

from pseudonymisation.identity import Identity
from pseudonymisation.linkage.synthetic_names import NAMES
from pseudonymisation.normalise import strip_marks

TRIALS = ("TRIAL-SIOPEN", "TRIAL-EURONET", "TRIAL-INTERFANT")
SITES_PER_COUNTRY = 3
GIVEN_SKEW, FAMILY_SKEW = 8, 15  # name i drawn with weight 1 / (i + skew)


@dataclass(frozen=True, slots=True)
class Record:
    truth: int  # the person, known only to the generator
    site: str  # the registering context
    local_id: str
    identity: Identity


@dataclass(frozen=True, slots=True)
class Errors:
    """Per-registration probabilities of each recording error."""

    drop_diacritics: float = 0.3
    transliterate: float = 0.2
    typo_given: float = 0.05
    typo_family: float = 0.05
    truncate_double: float = 0.35
    swap_day_month: float = 0.02
    wrong_digit: float = 0.02
    missing_sex: float = 0.03
    place_recorded: float = 0.5


@dataclass(frozen=True, slots=True)
class _Person:
    country: str
    given: tuple[str, ...]
    family: tuple[str, ...]
    birth: date
    sex: str
    place: str


def generate(
    persons: int,
    seed: int = 0,
    errors: Errors = Errors(),
    twins: float = 0.02,
    namesakes: float = 0.02,
    identical: float = 0.0003,
) -> list[Record]:
    """Registrations of `persons` people, in a shuffled order of arrival."""
    rng = random.Random(seed)  # noqa: S311 (synthetic data, reproducible on purpose)
    people: list[_Person] = []
    while len(people) < persons:
        person = _person(rng)
        people.append(person)
        roll = rng.random()
        if roll < twins:
            people.append(_twin(rng, person))
        elif roll < twins + namesakes:
            people.append(_namesake(rng, person))
        elif roll < twins + namesakes + identical:
            people.append(replace(person))
    records = []
    for truth, person in enumerate(people[:persons]):
        for context in _contexts(rng, person.country):
            identity = _recorded(rng, person, errors)
            local = f"{context[:6]}-{rng.randrange(10**8):08d}"
            records.append(Record(truth, context, local, identity))
    rng.shuffle(records)
    return records


def _names(rng: random.Random, words: str, double: float, skew: int) -> tuple[str, ...]:
    """Zipf-like: the commonest name goes to 2 to 4 % (as Müller, García or Emma do), the
    rarest to one or two in a thousand; flat short lists would make namesakes too common."""
    pool = words.split()
    weights = [1 / (i + skew) for i in range(len(pool))]
    first = rng.choices(pool, weights)[0].replace("_", " ")
    if rng.random() < double:
        second = rng.choices(pool, weights)[0].replace("_", " ")
        if second != first:
            return (first, second)
    return (first,)


def _person(rng: random.Random) -> _Person:
    country = rng.choice(list(NAMES))
    males, females, families, places = NAMES[country]
    sex = rng.choice(("male", "female"))
    given = _names(rng, males if sex == "male" else females, 0.25, GIVEN_SKEW)
    family = _names(rng, families, 0.9 if country == "ES" else 0.08, FAMILY_SKEW)
    birth = date(2005, 1, 1) + timedelta(days=rng.randrange(18 * 365))
    place = rng.choice(places.split()).replace("_", " ")
    return _Person(country, given, family, birth, sex, place)


def _twin(rng: random.Random, person: _Person) -> _Person:
    males, females, _, _ = NAMES[person.country]
    sex = person.sex if rng.random() < 0.6 else rng.choice(("male", "female"))
    given = person.given
    while set(given) & set(person.given):  # parents give twins names of their own
        given = _names(rng, males if sex == "male" else females, 0.25, GIVEN_SKEW)
    return _Person(person.country, given, person.family, person.birth, sex, person.place)


def _namesake(rng: random.Random, person: _Person) -> _Person:
    birth = person.birth + timedelta(days=rng.choice((-1, 1)) * rng.randrange(1, 90))
    place = rng.choice(NAMES[person.country][3].split()).replace("_", " ")
    return _Person(person.country, person.given, person.family, birth, person.sex, place)


def _contexts(rng: random.Random, country: str) -> list[str]:
    sites = [f"{country}-{i}" for i in range(1, SITES_PER_COUNTRY + 1)]
    home = rng.choice(sites)
    others = [s for s in sites if s != home] + list(TRIALS)
    count = rng.choices((1, 2, 3), (0.4, 0.4, 0.2))[0]
    return [home, *rng.sample(others, count - 1)]


def _recorded(rng: random.Random, person: _Person, e: Errors) -> Identity:
    """The person as one site recorded them."""
    strip = rng.random() < e.drop_diacritics
    spell = rng.random() < e.transliterate
    given = _variant(rng, person.given, e.typo_given, e.truncate_double, strip, spell)
    family = _variant(rng, person.family, e.typo_family, e.truncate_double, strip, spell)
    birth = person.birth.isoformat()
    if rng.random() < e.swap_day_month and person.birth.day <= 12:
        birth = f"{birth[:4]}-{birth[8:10]}-{birth[5:7]}"
    elif rng.random() < e.wrong_digit:
        i = rng.choice((2, 3, 5, 6, 8, 9))
        birth = birth[:i] + str((int(birth[i]) + rng.randrange(1, 3)) % 10) + birth[i + 1 :]
        if not _is_date(birth):
            birth = person.birth.isoformat()
    sex = None if rng.random() < e.missing_sex else person.sex
    place = person.place if rng.random() < e.place_recorded else None
    return Identity(given, family, birth, sex, place)


def _variant(
    rng: random.Random,
    names: tuple[str, ...],
    typo: float,
    truncate: float,
    strip: bool,
    spell: bool,
) -> tuple[str, ...]:
    if len(names) > 1 and rng.random() < truncate:
        names = names[:1]
    elif len(names) > 1 and rng.random() < 0.5:
        names = ("-".join(names),)  # one hyphenated name instead of two
    out = []
    for name in names:
        if spell:
            name = name.replace("ü", "ue").replace("ö", "oe").replace("ä", "ae")
        if strip:
            name = strip_marks(name)
        if rng.random() < typo:
            name = _typo(rng, name)
        out.append(name.upper() if rng.random() < 0.2 else name)
    return tuple(out)


def _typo(rng: random.Random, name: str) -> str:
    if len(name) < 3:
        return name
    i = rng.randrange(1, len(name) - 1)
    kind = rng.randrange(4)
    if kind == 0:
        return name[:i] + name[i + 1 :]
    if kind == 1:
        return name[:i] + rng.choice("aeinorst") + name[i:]
    if kind == 2:
        return name[:i] + rng.choice("aeinorst") + name[i + 1 :]
    return name[: i - 1] + name[i] + name[i - 1] + name[i + 1 :]


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True
