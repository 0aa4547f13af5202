"""A scoring run's summary, whichever engine ran it: what it counts, the text it ends with,
and whether the run is finished (exit 0) or not (exit 1). The local engine fills one as rows
are written; each shard of a Ray run makes its own, which travels back as JSON and is added
to the run's."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sampleiqa.runtime.contracts import RETRIED_CODES

from .protocol import ScoreResult


@dataclass
class Summary:
    total: int = 0
    skipped: int = 0
    scored: int = 0
    errors: Counter = field(default_factory=Counter)
    faces: int = 0
    seconds: float = 0.0
    retrying: int = 0  # rows of an earlier run dropped by --resume to be scored again
    aborted: str = ""
    refused: int = 0  # requests a busy server refused (its queue at its bound), each retried
    failed: int = 0  # shards of a distributed run that failed (storage, a bug): no rows, scored on --resume
    failure: str = ""  # the first of their errors

    def record(self, result: ScoreResult) -> None:
        """One row written, for `result`."""
        self.scored += 1
        if result.ok:
            self.faces += bool(result.face_found)
        else:
            self.errors[result.error_code] += 1

    def add(self, part: "Summary") -> None:
        """A part of this run (a shard of a distributed one), whose files `total` counts already."""
        self.skipped += part.skipped
        self.retrying += part.retrying
        self.scored += part.scored
        self.faces += part.faces
        self.refused += part.refused
        self.failed += part.failed
        self.failure = self.failure or part.failure
        self.errors.update(part.errors)
        self.aborted = self.aborted or part.aborted

    def to_json(self) -> str:
        return json.dumps({**vars(self), "errors": dict(self.errors)})  # not asdict(): it mangles a Counter

    @classmethod
    def from_json(cls, text: str) -> "Summary":
        fields = json.loads(text)
        return cls(**{**fields, "errors": Counter(fields["errors"])})

    @property
    def to_retry(self) -> int:
        """Rows written by this run that --resume will score again."""
        return sum(n for code, n in self.errors.items() if code in RETRIED_CODES)

    @property
    def finished(self) -> bool:
        return not self.aborted and not self.to_retry and not self.failed

    def text(self, out: Path) -> str:
        rate = self.scored / self.seconds if self.seconds else 0.0
        ok = self.scored - sum(self.errors.values())
        again = f" ({self.retrying} of them again after a transient error)" if self.retrying else ""
        lines = [
            f"{self.total} files: {ok} scored ok ({self.faces} with a face), "
            f"{sum(self.errors.values())} errors, {self.skipped} already in {out}",
            f"{self.scored} rows written{again} in {self.seconds:.1f}s ({rate:.1f} images/s)",
        ]
        if self.errors:
            lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in self.errors.most_common()))
        if self.refused:
            lines.append(f"server busy: {self.refused} requests refused (its queue was full) and sent again")
        if self.aborted:
            lines.append(f"STOPPED: {self.aborted}. Rerun with --resume to score the rest.")
        elif self.to_retry or self.failed:
            why = []
            if self.to_retry:
                why.append(
                    f"{self.to_retry} files failed on the server's or the storage's side "
                    f"({', '.join(sorted(RETRIED_CODES))}), not because of the image"
                )
            if self.failed:
                why.append(f"{self.failed} shards failed and have no rows yet (first: {self.failure})")
            lines.append(f"NOT FINISHED: {'; '.join(why)}; rerun with --resume to score them again.")
        return "\n".join(lines)
