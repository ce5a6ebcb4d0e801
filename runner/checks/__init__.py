"""The recipe's checks: pure functions that take models/tensors and return a Verdict.

Checks never print or write files; a stage collects verdicts (and any figures they
return) and hands them to the output module. Each check has a stable name from DESIGN.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

STATUSES = ("pass", "warn", "fail", "skip")


@dataclass
class Verdict:
    name: str
    status: str
    value: Any = None
    expected: Any = None
    message: str = ""
    artifacts: List[str] = field(default_factory=list)
    # figures (matplotlib) the stage saves under plots/ and lists in artifacts; not serialised
    figures: Dict[str, Any] = field(default_factory=dict, repr=False)
    details: Dict[str, Any] = field(default_factory=dict)
    seconds: Optional[float] = None

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} not in {STATUSES}")

    def to_dict(self) -> Dict[str, Any]:
        value = self.value
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        d = {
            "name": self.name,
            "status": self.status,
            "value": value,
            "expected": self.expected,
            "message": self.message,
            "artifacts": list(self.artifacts),
        }
        if self.details:
            d["details"] = self.details
        if self.seconds is not None:
            d["seconds"] = round(self.seconds, 3)
        return d


def skip(name: str, reason: str) -> Verdict:
    return Verdict(name, "skip", message=reason)
