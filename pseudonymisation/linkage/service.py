"""The linkage service: registrations in, pseudonyms out, doubtful links to a curator.

Each registration is matched once as it arrives: candidates come only from the blocking
keys (an indexed SQL lookup, so cost follows block size, not population), are scored in
Python and grouped by person. A person that already holds another local id of the same
context is never a candidate: a site does not register one child twice. Above the upper
threshold the registration joins the best person; between the thresholds it gets a new
person and a review item; below, a new person. Pseudonyms never change silently: only a
curator's resolution merges or splits, and each one is written to the change feed the
platform follows. `recluster` re-scores everything in batch (best edges first, with the
same-context rule) and files what the batch sees differently as proposals for review.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, func, insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from pseudonymisation.encoding import Encoding
from pseudonymisation.linkage import schema
from pseudonymisation.linkage.matching import DEFAULT_WEIGHTS, Thresholds, Weights, score
from pseudonymisation.linkage.pseudonyms import PseudonymFormat

P, R, B, REV, CH, AUD = (
    schema.persons,
    schema.registrations,
    schema.blocking_keys,
    schema.reviews,
    schema.changes,
    schema.audit,
)
DECISIONS = {"merge": "merged", "separate": "separated"}


class NotFound(LookupError):
    pass


class Forbidden(PermissionError):
    pass


class Conflict(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Registration:
    research_pseudonym: str
    context_pseudonym: str
    status: str  # new | matched | review | known


@dataclass(frozen=True, slots=True)
class Review:
    """A doubtful link, as a curator sees it: pseudonyms and a score, never identities."""

    id: int
    kind: str  # match: apart now, perhaps one person | split: together now, perhaps two
    context: str
    context_pseudonym: str
    research_pseudonym: str  # the registration's person now
    candidate_pseudonym: str  # the other person (match) or the same (split)
    score: float
    status: str
    resolved_by: str | None


@dataclass(frozen=True, slots=True)
class Change:
    """Re-point what the platform holds under `old_pseudonym` to `new_pseudonym`; for a
    split, only the resources of `context` registered under `context_pseudonym`."""

    seq: int
    kind: str  # merge | split
    old_pseudonym: str
    new_pseudonym: str
    context: str | None
    context_pseudonym: str | None


@dataclass(frozen=True, slots=True)
class _Best:
    """The best-scoring candidate person for a registration, and its research pseudonym."""

    person: int | None
    research: str | None
    score: float


class LinkageService:
    def __init__(
        self,
        engine: Engine,
        secret: bytes,
        *,
        thresholds: Thresholds = Thresholds(),  # noqa: B008 (frozen, immutable)
        weights: Weights = DEFAULT_WEIGHTS,
        research_format: PseudonymFormat = PseudonymFormat(),  # noqa: B008
        context_format: PseudonymFormat = PseudonymFormat(prefix="CTX"),  # noqa: B008
        cache_size: int = 500_000,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the linkage secret must have at least 16 bytes")
        self.engine = engine
        self.secret = secret
        self.thresholds = thresholds
        self.weights = weights
        self.research_format = research_format
        self.context_format = context_format
        self._cache: dict[int, Encoding] = {}  # registrations' encodings never change
        self._cache_size = cache_size

    # -- registration --------------------------------------------------------------------

    def register(
        self, context: str, local_token: str, sealed_local_id: str, encoding: Encoding
    ) -> Registration:
        """Idempotent for the same (context, local token): the second call says `known`.

        Optimistic, for few round trips: nothing is checked before the inserts, whose
        unique constraints catch a registration already there (then it is read back) and,
        rarely, a pseudonym already taken (then the registration is redone, checked)."""
        if not context or not local_token or not sealed_local_id:
            raise ValueError("context, local_token and sealed_local_id are required")
        for checked in (False, True):
            try:
                with self.engine.begin() as conn:
                    return self._register(
                        conn, context, local_token, sealed_local_id, encoding, checked
                    )
            except IntegrityError:  # already registered (perhaps concurrently), or a collision
                with self.engine.connect() as conn:
                    known = self._known(conn, context, local_token)
                if known is not None:
                    return known
                if checked:
                    raise
        raise AssertionError("unreachable")

    def _known(self, conn: Connection, context: str, local_token: str) -> Registration | None:
        row = conn.execute(
            select(P.c.research_pseudonym, R.c.context_pseudonym)
            .join(P, P.c.id == R.c.person_id)
            .where(R.c.context == context, R.c.local_token == local_token)
        ).first()
        return None if row is None else Registration(row[0], row[1], "known")

    def _register(
        self,
        conn: Connection,
        context: str,
        local_token: str,
        sealed: str,
        encoding: Encoding,
        checked: bool,
    ) -> Registration:
        best = self._best_candidate(conn, context, encoding)
        now = datetime.now(UTC)
        if best.person is not None and best.score >= self.thresholds.upper:
            status, person_id, research = "matched", best.person, best.research
        else:
            status = "review" if best.score >= self.thresholds.lower else "new"
            seed = f"person:{context}:{local_token}"
            person_id, research = self._new_person(conn, seed, now, checked)
        context_pseudonym = self._pseudonym_for(
            conn,
            R.c.context_pseudonym,
            self.context_format,
            f"context:{context}:{local_token}",
            checked,
        )
        registration_id = conn.execute(
            insert(R).values(
                context=context,
                local_token=local_token,
                sealed_local_id=sealed,
                encoding=encoding.dumps(),
                person_id=person_id,
                context_pseudonym=context_pseudonym,
                created=now,
            )
        ).inserted_primary_key[0]
        if encoding.blocks:
            conn.execute(
                insert(B), [{"key": k, "registration_id": registration_id} for k in encoding.blocks]
            )
        if status == "review":
            self._file(conn, "match", registration_id, best.person, best.score, now)
        self._remember(registration_id, encoding)
        return Registration(research, context_pseudonym, status)

    def _best_candidate(self, conn: Connection, context: str, encoding: Encoding) -> _Best:
        """The best-scoring person among the blocking candidates, same-context ones excluded.

        Two index lookups (blocking keys, then registrations by primary key) rather than one
        join: the planner cannot turn them into scans of the whole population, whatever its
        statistics say; the candidates' encodings come from the cache."""
        if not encoding.blocks:
            return _Best(None, None, float("-inf"))
        ids = conn.execute(
            select(B.c.registration_id).where(B.c.key.in_(encoding.blocks)).distinct()
        ).scalars()
        rows = conn.execute(
            select(R.c.id, R.c.person_id, R.c.context, P.c.research_pseudonym)
            .join(P, P.c.id == R.c.person_id)
            .where(R.c.id.in_(list(ids)))
        ).all()
        barred = {person for _, person, ctx, _ in rows if ctx == context}
        candidates = [row for row in rows if row[1] not in barred]
        encodings = self._encodings(conn, [rid for rid, *_ in candidates])
        best = _Best(None, None, float("-inf"))
        for rid, person, _, research in candidates:
            value = score(encoding, encodings[rid], self.weights)
            if value > best.score:
                best = _Best(person, research, value)
        return best

    def _encodings(self, conn: Connection, ids: Iterable[int]) -> dict[int, Encoding]:
        wanted = set(ids)
        missing = [i for i in wanted if i not in self._cache]
        for start in range(0, len(missing), 1000):
            chunk = missing[start : start + 1000]
            for rid, text in conn.execute(select(R.c.id, R.c.encoding).where(R.c.id.in_(chunk))):
                self._remember(rid, Encoding.loads(text))
        return {i: self._cache[i] for i in wanted}

    def _remember(self, registration_id: int, encoding: Encoding) -> None:
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[registration_id] = encoding

    def _new_person(
        self, conn: Connection, seed: str, now: datetime, checked: bool = True
    ) -> tuple[int, str]:
        pseudonym = self._pseudonym_for(
            conn, P.c.research_pseudonym, self.research_format, seed, checked
        )
        person_id = conn.execute(
            insert(P).values(research_pseudonym=pseudonym, created=now)
        ).inserted_primary_key[0]
        return person_id, pseudonym

    def _pseudonym_for(
        self, conn: Connection, column, fmt: PseudonymFormat, seed: str, checked: bool
    ) -> str:
        """The seed's pseudonym; `checked`, on the rare collision that of seed#1, seed#2 ...
        (unchecked, a collision surfaces as an IntegrityError at the insert)."""
        candidate, attempt = fmt.make(self.secret, seed), 0
        while checked and conn.execute(select(column).where(column == candidate)).first():
            attempt += 1
            candidate = fmt.make(self.secret, f"{seed}#{attempt}")
        return candidate

    def _file(
        self,
        conn: Connection,
        kind: str,
        registration_id: int,
        person_id: int,
        value: float,
        now: datetime,
    ) -> int:
        return conn.execute(
            insert(REV).values(
                kind=kind,
                registration_id=registration_id,
                person_id=person_id,
                score=value,
                status="open",
                created=now,
            )
        ).inserted_primary_key[0]

    # -- review ----------------------------------------------------------------------------

    def reviews(self, status: str = "open", after: int = 0, limit: int = 100) -> list[Review]:
        with self.engine.connect() as conn:
            return self._reviews(conn, (REV.c.status == status, REV.c.id > after), limit)

    def _reviews(self, conn: Connection, where: tuple, limit: int) -> list[Review]:
        mine, theirs = P.alias("mine"), P.alias("theirs")
        rows = conn.execute(
            select(
                REV.c.id,
                REV.c.kind,
                R.c.context,
                R.c.context_pseudonym,
                mine.c.research_pseudonym,
                theirs.c.research_pseudonym,
                REV.c.score,
                REV.c.status,
                REV.c.resolved_by,
            )
            .join(R, R.c.id == REV.c.registration_id)
            .join(mine, mine.c.id == R.c.person_id)
            .join(theirs, theirs.c.id == REV.c.person_id)
            .where(*where)
            .order_by(REV.c.id)
            .limit(limit)
        )
        return [Review(*row) for row in rows]

    def resolve(self, review_id: int, decision: str, by: str) -> Review:
        """merge: the registration's person joins the candidate; separate: they stay (or,
        for a split proposal, become) two persons. Audited; writes the change feed."""
        if decision not in DECISIONS:
            raise ValueError("decision must be 'merge' or 'separate'")
        with self.engine.begin() as conn:
            item = conn.execute(
                select(REV.c.status, REV.c.registration_id, REV.c.person_id)
                .where(REV.c.id == review_id)
                .with_for_update()
            ).first()
            if item is None:
                raise NotFound(f"no review item {review_id}")
            if item.status != "open":
                raise Conflict(f"review item {review_id} is already {item.status}")
            reg = conn.execute(
                select(R.c.id, R.c.person_id, R.c.context, R.c.local_token, R.c.context_pseudonym)
                .where(R.c.id == item.registration_id)
                .with_for_update()
            ).one()
            candidate, now = self._live(conn, item.person_id), datetime.now(UTC)
            if decision == "merge" and reg.person_id != candidate:
                self._merge(conn, reg.person_id, candidate, now)
            elif decision == "separate" and reg.person_id == candidate:
                self._split(conn, reg, now)
            status = DECISIONS[decision]
            conn.execute(
                update(REV)
                .where(REV.c.id == review_id)
                .values(status=status, resolved_by=by, resolved_at=now)
            )
            self._audit(conn, "resolve", by, reg.context, str(review_id), status, now)
            return self._reviews(conn, (REV.c.id == review_id,), 1)[0]

    def _live(self, conn: Connection, person_id: int) -> int:
        """Where a person's registrations are now (merges point merged persons onward)."""
        merged = conn.execute(select(P.c.merged_into).where(P.c.id == person_id)).scalar_one()
        return person_id if merged is None else merged

    def _pseudonym(self, conn: Connection, person_id: int) -> str:
        query = select(P.c.research_pseudonym).where(P.c.id == person_id)
        return conn.execute(query).scalar_one()

    def _merge(self, conn: Connection, source: int, target: int, now: datetime) -> None:
        conn.execute(update(R).where(R.c.person_id == source).values(person_id=target))
        conn.execute(
            update(P)
            .where(or_(P.c.id == source, P.c.merged_into == source))
            .values(merged_into=target)
        )
        conn.execute(update(REV).where(REV.c.person_id == source).values(person_id=target))
        conn.execute(
            insert(CH).values(
                kind="merge",
                old_pseudonym=self._pseudonym(conn, source),
                new_pseudonym=self._pseudonym(conn, target),
                created=now,
            )
        )

    def _split(self, conn: Connection, reg, now: datetime) -> None:
        """The registration leaves its person for a new one (unless it is the only one)."""
        count = select(func.count()).where(R.c.person_id == reg.person_id)
        if conn.execute(count).scalar_one() < 2:
            return
        seed = f"split:{reg.context}:{reg.local_token}"
        person, _ = self._new_person(conn, seed, now)
        conn.execute(update(R).where(R.c.id == reg.id).values(person_id=person))
        conn.execute(
            insert(CH).values(
                kind="split",
                old_pseudonym=self._pseudonym(conn, reg.person_id),
                new_pseudonym=self._pseudonym(conn, person),
                context=reg.context,
                context_pseudonym=reg.context_pseudonym,
                created=now,
            )
        )

    def _audit(
        self,
        conn: Connection,
        action: str,
        actor: str,
        context: str | None,
        target: str,
        outcome: str,
        now: datetime,
    ) -> None:
        conn.execute(
            insert(AUD).values(
                action=action,
                actor=actor,
                context=context,
                target=target,
                outcome=outcome,
                created=now,
            )
        )

    # -- re-identification, change feed ----------------------------------------------------

    def reidentify(self, context: str, pseudonym: str, actor: str) -> str:
        """The sealed local id behind a context or research pseudonym, for the context that
        registered it only (the earliest, if a curator merged two of its registrations).
        Every call is audited, refusals included."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(R.c.context, R.c.sealed_local_id)
                .join(P, P.c.id == R.c.person_id)
                .where(or_(R.c.context_pseudonym == pseudonym, P.c.research_pseudonym == pseudonym))
                .order_by(R.c.id)
            ).all()
            if not rows:  # perhaps a research pseudonym merged away: follow it
                rows = conn.execute(
                    select(R.c.context, R.c.sealed_local_id)
                    .join(P, P.c.merged_into == R.c.person_id)
                    .where(P.c.research_pseudonym == pseudonym)
                    .order_by(R.c.id)
                ).all()
            sealed = next((s for ctx, s in rows if ctx == context), None)
            outcome = "granted" if sealed else "denied" if rows else "not-found"
            self._audit(conn, "reidentify", actor, context, pseudonym, outcome, datetime.now(UTC))
        if sealed is None and rows:
            raise Forbidden(f"{pseudonym} was not registered by {context}")
        if sealed is None:
            raise NotFound(f"no registration under {pseudonym}")
        return sealed

    def changes(self, since: int = 0, limit: int = 1000) -> list[Change]:
        """Merges and splits after sequence number `since`, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    CH.c.seq,
                    CH.c.kind,
                    CH.c.old_pseudonym,
                    CH.c.new_pseudonym,
                    CH.c.context,
                    CH.c.context_pseudonym,
                )
                .where(CH.c.seq > since)
                .order_by(CH.c.seq)
                .limit(limit)
            )
            return [Change(*row) for row in rows]

    # -- batch -----------------------------------------------------------------------------

    def recluster(self) -> list[Review]:
        """Cluster the whole population in batch and file, as review items, the merges and
        splits it would make. Pseudonyms do not change until a curator resolves them; a
        pair a curator already decided on is not proposed again."""
        with self.engine.begin() as conn:
            regs = {
                rid: (person, ctx, token)
                for rid, person, ctx, token in conn.execute(
                    select(R.c.id, R.c.person_id, R.c.context, R.c.local_token)
                )
            }
            blocks: dict[str, list[int]] = defaultdict(list)
            for key, rid in conn.execute(select(B.c.key, B.c.registration_id)):
                blocks[key].append(rid)
            encodings = self._encodings(conn, regs)
            scores = self._pair_scores(blocks.values(), encodings)
            root = self._clusters(regs, scores)
            decided = set(conn.execute(select(REV.c.registration_id, REV.c.person_id)).all())
            members: dict[int, list[int]] = defaultdict(list)
            for rid, (person, _, _) in regs.items():
                members[person].append(rid)
            now, filed = datetime.now(UTC), []
            for kind, rid, person in self._proposals(regs, root):
                if (rid, person) in decided:
                    continue
                decided.add((rid, person))
                best = max(
                    (
                        score(encodings[rid], encodings[o], self.weights)
                        for o in members[person]
                        if o != rid
                    ),
                    default=0.0,
                )
                filed.append(self._file(conn, kind, rid, person, best, now))
            if not filed:
                return []
            return self._reviews(conn, (REV.c.id.in_(filed),), len(filed))

    def _pair_scores(
        self, blocks: Iterable[list[int]], encodings: dict[int, Encoding]
    ) -> dict[tuple[int, int], float]:
        scores: dict[tuple[int, int], float] = {}
        for members in blocks:
            for a, b in itertools.combinations(sorted(members), 2):
                if (a, b) not in scores:
                    scores[(a, b)] = score(encodings[a], encodings[b], self.weights)
        return scores

    def _clusters(
        self, regs: dict[int, tuple[int, str, str]], scores: dict[tuple[int, int], float]
    ) -> dict[int, int]:
        """Union-find over the edges at or above the upper threshold, best first, never
        joining two clusters that hold different local ids of one context."""
        parent = {rid: rid for rid in regs}
        locals_ = {rid: {ctx: token} for rid, (_, ctx, token) in regs.items()}

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        edges = sorted(
            ((s, pair) for pair, s in scores.items() if s >= self.thresholds.upper), reverse=True
        )
        for _, (a, b) in edges:
            ra, rb = find(a), find(b)
            if ra == rb:
                continue
            la, lb = locals_[ra], locals_[rb]
            if any(la.get(ctx, token) != token for ctx, token in lb.items()):
                continue
            if len(la) < len(lb):
                ra, rb, la, lb = rb, ra, lb, la
            parent[rb] = ra
            la.update(lb)
        return {rid: find(rid) for rid in regs}

    @staticmethod
    def _proposals(
        regs: dict[int, tuple[int, str, str]], root: dict[int, int]
    ) -> list[tuple[str, int, int]]:
        """(kind, registration, person): a batch cluster spread over several persons asks
        the smaller ones to join the largest; a person spread over several clusters asks
        the registrations outside its largest cluster to leave."""
        by_cluster: dict[int, list[int]] = defaultdict(list)
        by_person: dict[int, list[int]] = defaultdict(list)
        for rid, (person, _, _) in regs.items():
            by_cluster[root[rid]].append(rid)
            by_person[person].append(rid)
        out = []
        for members in by_cluster.values():
            persons = Counter(regs[r][0] for r in members)
            if len(persons) > 1:
                main = min(persons, key=lambda p: (-persons[p], p))
                firsts = {regs[r][0]: r for r in sorted(members, reverse=True)}
                out += [("match", firsts[p], main) for p in sorted(persons) if p != main]
        for person, members in by_person.items():
            clusters = Counter(root[r] for r in members)
            if len(clusters) > 1:
                main = min(clusters, key=lambda c: (-clusters[c], c))
                out += [("split", r, person) for r in sorted(members) if root[r] != main]
        return out
