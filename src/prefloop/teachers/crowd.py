"""A simulated crowd: several simulated raters answering through the store, each under their own id.

Spec syntax (``--teacher crowd:...`` in ``train``, a teacher of ``bench``)::

    crowd:MEMBER[,MEMBER...]      MEMBER = [COUNTx]KIND[@EPSILON]

``KIND`` is one of B-Pref's presets (``oracle``, ``stochastic``, ``myopic``, ``mistake``, ``skip``,
``equal``) or ``careful`` (the oracle; give it a mistake rate with ``@``), ``random`` (left or
right at random: a mistake rate of 0.5) or ``adversarial`` (always the worse clip: a mistake rate
of 1). ``@EPSILON`` sets the member's mistake rate. Example, three careful raters who err 5 % of the
time, one at random and one adversarial::

    crowd:3xcareful@0.05,random,adversarial

Members are named ``sim-<kind>-<n>`` (``sim-careful-1`` ... ``sim-careful-3``, ``sim-random-1``).
Each pending pair is taken by a member drawn at random (seeded) among those who may still label
it, so with ``raters_per_pair=1`` the crowd shares the label budget evenly, as people taking pairs
from one queue do. A crowd simulates people: the loop asks it gold pairs too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from prefloop.teachers.simulated import (
    TEACHER_PRESETS,
    SimulatedTeacher,
    TeacherConfig,
    TeacherConfigError,
)
from prefloop.types import Choice, Segment

CROWD_PREFIX = "crowd:"
# Kinds beyond B-Pref's presets, as the mistake rate that defines them (None: the preset's own).
_EXTRA_KINDS: dict[str, float | None] = {"careful": None, "random": 0.5, "adversarial": 1.0}
_MEMBER = re.compile(r"^(?:(?P<count>\d+)x)?(?P<kind>[a-z_]+)(?:@(?P<epsilon>[^,@]+))?$")
MAX_CROWD = 100
_EXAMPLE = "e.g. crowd:3xcareful@0.05,random,adversarial"

__all__ = ["CROWD_PREFIX", "CrowdMember", "CrowdTeacher", "make_crowd_teacher", "parse_crowd_spec"]


@dataclass(frozen=True)
class CrowdMember:
    """``count`` raters of one kind: a B-Pref preset (or careful/random/adversarial) and an optional
    mistake rate."""

    kind: str
    count: int = 1
    epsilon: float | None = None

    def config(self) -> TeacherConfig:
        base = TEACHER_PRESETS.get(self.kind, TEACHER_PRESETS["oracle"])
        epsilon = self.epsilon if self.epsilon is not None else _EXTRA_KINDS.get(self.kind)
        return base if epsilon is None else replace(base, epsilon=epsilon)


def parse_crowd_spec(spec: str) -> list[CrowdMember]:
    """``"crowd:3xcareful@0.05,random,adversarial"`` -> its members (see the module docstring).

    Raises:
        TeacherConfigError: one line naming the bad member and the syntax.
    """
    body = spec[len(CROWD_PREFIX):] if spec.startswith(CROWD_PREFIX) else spec
    kinds = sorted({*TEACHER_PRESETS, *_EXTRA_KINDS})
    members = []
    for text in (part.strip() for part in body.split(",")):
        match = _MEMBER.match(text)
        if not match:
            raise TeacherConfigError(
                f"crowd member {text!r} is not [COUNTx]KIND[@EPSILON] ({_EXAMPLE}); kinds: {', '.join(kinds)}"
            )
        kind, count = match["kind"], int(match["count"] or 1)
        if kind not in kinds:
            raise TeacherConfigError(f"crowd member {text!r}: unknown kind {kind!r}; kinds: {', '.join(kinds)}")
        if not 1 <= count <= MAX_CROWD:
            raise TeacherConfigError(f"crowd member {text!r}: count must be 1..{MAX_CROWD}")
        epsilon = None
        if match["epsilon"] is not None:
            if kind in ("random", "adversarial"):
                raise TeacherConfigError(f"crowd member {text!r}: {kind} defines its own mistake rate; drop the @")
            try:
                epsilon = float(match["epsilon"])
            except ValueError:
                raise TeacherConfigError(f"crowd member {text!r}: {match['epsilon']!r} is not a number ({_EXAMPLE})") from None
        member = CrowdMember(kind, count, epsilon)
        member.config()  # range check of epsilon, by TeacherConfig itself
        members.append(member)
    if sum(m.count for m in members) > MAX_CROWD:
        raise TeacherConfigError(f"a crowd has at most {MAX_CROWD} raters, got {sum(m.count for m in members)}")
    return members


class CrowdTeacher:
    """Several raters (anything with ``rater_id`` and ``compare``) answering one run's pairs.

    Args:
        members: the raters; their ``rater_id`` must differ.
        seed: seeds who takes which pair.

    ``rater_id`` is ``"crowd"``; :func:`prefloop.teachers.labeling.answer_pending` lets each member answer
    under their own id.
    """

    rater_id = "crowd"
    simulates_people = True

    def __init__(self, members: Sequence[object], seed: int = 0) -> None:
        ids = [m.rater_id for m in members]  # type: ignore[attr-defined]
        if not ids or len(set(ids)) != len(ids):
            raise TeacherConfigError(f"a crowd needs members with distinct rater ids, got {ids}")
        self.members = list(members)
        self.rng = np.random.default_rng([seed, 0xC20D])

    def set_return_scale(self, scale: float) -> None:
        for member in self.members:
            if hasattr(member, "set_return_scale"):
                member.set_return_scale(scale)

    def compare(self, left: Segment, right: Segment) -> Choice:
        """One answer from a member drawn at random (the store path gives each member their own pairs)."""
        member = self.members[int(self.rng.integers(len(self.members)))]
        return member.compare(left, right)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"CrowdTeacher({[m.rater_id for m in self.members]})"  # type: ignore[attr-defined]


def make_crowd_teacher(spec: str, seed: int = 0) -> CrowdTeacher:
    """The crowd a spec describes; member ``i`` is seeded with ``(seed, i)``."""
    raters: list[SimulatedTeacher] = []
    for member in parse_crowd_spec(spec):
        for n in range(1, member.count + 1):
            member_seed = int(np.random.SeedSequence([seed, len(raters)]).generate_state(1)[0])
            raters.append(SimulatedTeacher(member.config(), seed=member_seed, rater_id=f"sim-{member.kind}-{n}"))
    return CrowdTeacher(raters, seed=seed)
