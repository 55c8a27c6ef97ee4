"""What ``prefloop doctor`` found: findings with a severity, and the report as text or JSON."""

from __future__ import annotations

import os
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

ERROR = "error"  # data is damaged or unusable
WARNING = "warning"  # the run works, but something needs attention (or a repair)
INFO = "info"  # routine, not a problem (e.g. leases left by a stopped app: the next claim takes them over)
SEVERITIES = (ERROR, WARNING, INFO)
MAX_LISTED = 10


@dataclass
class Finding:
    """One problem.

    Attributes:
        severity: ``"error"`` (damaged or unusable data) or ``"warning"`` (needs attention).
        check: which check found it, e.g. ``"pair_status"``.
        what: what is wrong, naming the rows or files.
        repaired: ``--repair`` fixed it.
        fix: how to fix it otherwise (empty when repaired).
    """

    severity: str
    check: str
    what: str
    repaired: bool = False
    fix: str = ""


@dataclass
class DoctorReport:
    """What :func:`check_run` found. ``healthy`` when no finding is left unrepaired."""

    target: str
    checks: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the run is, when that is not obvious
    repair_command: str = "prefloop doctor --repair"  # with the --run-dir / --db-url it was given

    @property
    def remaining(self) -> list[Finding]:
        """The problems left: neither repaired nor merely informational."""
        return [f for f in self.findings if not f.repaired and f.severity != INFO]

    @property
    def healthy(self) -> bool:
        return not self.remaining

    def add(self, severity: str, check: str, what: str, fix: str = "", repaired: bool = False) -> Finding:
        finding = Finding(severity, check, what, repaired, "" if repaired else fix)
        self.findings.append(finding)
        return finding

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "healthy": self.healthy,
            "checks": self.checks,
            "notes": self.notes,
            "findings": [asdict(f) for f in self.findings],
        }

    def to_text(self) -> str:
        lines = [f"prefloop doctor: {self.target}", f"checks: {', '.join(self.checks)}"]
        lines += [f"  note: {note}" for note in self.notes]
        for f in self.findings:
            mark = "  [repaired]" if f.repaired else ""
            lines.append(f"  {f.severity.upper():7} {f.check}: {f.what}{mark}")
            if f.fix:
                lines.append(f"          fix: {f.fix}")
        repaired = sum(f.repaired for f in self.findings)
        if self.healthy:
            lines.append(f"healthy ({repaired} repaired)" if repaired else "healthy: no problems found")
        else:
            lines.append(f"{len(self.remaining)} problem(s) remain, {repaired} repaired")
        return "\n".join(lines)


def repair_command(run_dir: str | os.PathLike[str] | None, db_url: str | None, run_name: str | None) -> str:
    """``prefloop doctor ... --repair`` for what this check was given, ready to paste (no password)."""
    words = ["prefloop", "doctor"]
    if run_dir is not None:
        words += ["--run-dir", str(run_dir)]
    if db_url is not None:
        words += ["--db-url", safe_url(db_url)]
    if run_name is not None:
        words += ["--run-name", run_name]
    return shlex.join([*words, "--repair"])


def safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def listed_ids(ids: list[int]) -> str:
    head = ", ".join(str(i) for i in ids[:MAX_LISTED])
    return head + (f" and {len(ids) - MAX_LISTED} more" if len(ids) > MAX_LISTED else "")

