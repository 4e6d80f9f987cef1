"""Linkage quality against a known truth: pairwise precision and recall, the exact-hash
floor, and a curator who always knows the truth (what review can achieve at best)."""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine

from pseudonymisation import normalise
from pseudonymisation.identity import Identity
from pseudonymisation.linkage import schema
from pseudonymisation.linkage.service import LinkageService


@dataclass(frozen=True, slots=True)
class Quality:
    precision: float
    recall: float
    false_merges: int  # pairs of registrations linked that are two people
    false_splits: int  # pairs of registrations of one person left apart

    def __str__(self) -> str:
        return (
            f"precision {self.precision:.4f}  recall {self.recall:.4f}  "
            f"false merges {self.false_merges}  false splits {self.false_splits}"
        )


def pairwise(truth: Sequence[Hashable], predicted: Sequence[Hashable]) -> Quality:
    """Over all pairs of registrations: linked (same predicted label) vs same person."""

    def pairs(counts: Counter) -> int:
        return sum(n * (n - 1) // 2 for n in counts.values())

    both = pairs(Counter(zip(truth, predicted, strict=True)))
    linked, same = pairs(Counter(predicted)), pairs(Counter(truth))
    return Quality(
        precision=both / linked if linked else 1.0,
        recall=both / same if same else 1.0,
        false_merges=linked - both,
        false_splits=same - both,
    )


def exact_key(identity: Identity, key: bytes) -> str:
    """The naive approach: one keyed hash of all normalised fields; equal hash, one person."""
    year, month, day = normalise.birth_date(identity.birth_date)
    text = "|".join(
        [
            " ".join(normalise.name_tokens(identity.given)),
            " ".join(normalise.name_tokens(identity.family)),
            f"{year}-{month}-{day}",
            normalise.sex(identity.sex) or "",
        ]
    )
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def assignment(engine: Engine) -> dict[str, str]:
    """context pseudonym -> research pseudonym, as the service has them now."""
    query = select(schema.registrations.c.context_pseudonym, schema.persons.c.research_pseudonym)
    query = query.join(schema.persons, schema.persons.c.id == schema.registrations.c.person_id)
    with engine.connect() as conn:
        return dict(conn.execute(query).all())


def resolve_by_truth(service: LinkageService, truth: dict[str, Hashable]) -> int:
    """Resolve every open review item as an all-knowing curator would; how many it took.
    `truth` maps each context pseudonym to its person."""
    done = 0
    while items := service.reviews(limit=1000):
        members: dict[str, list[str]] = defaultdict(list)
        for context_pseudonym, research in assignment(service.engine).items():
            members[research].append(context_pseudonym)
        for item in items:
            others = [c for c in members[item.candidate_pseudonym] if c != item.context_pseudonym]
            majority = Counter(truth[c] for c in others).most_common(1)
            same = bool(majority) and majority[0][0] == truth[item.context_pseudonym]
            service.resolve(item.id, "merge" if same else "separate", by="truth")
            done += 1
    return done
