"""Sample sections of ``status`` shared by the CLI tests (the TUI, the metrics)."""

from __future__ import annotations

from typing import Any

OTHER = "aa" * 32
FAR = "cc" * 32
SHUNNED = "dd" * 32


def audits_section() -> dict[str, Any]:
    """The ``audits`` section of ``status``, as the Auditor reports it."""
    return {
        "enabled": True,
        "interval": 900.0,
        "sent": 12,
        "passed": 10,
        "failed": 1,
        "unanswered": 1,
        "missing": 3,
        "possession_checks": 4,
        "answered": 9,
        "refused": {"busy": 2, "replayed": 1, "malformed": 0, "not_responsible": 0},
        "shunned": [SHUNNED],
        "trust": {
            OTHER: {"score": 1.25, "passed": 3, "failed": 0},
            SHUNNED: {"score": -2.5, "passed": 3, "failed": 1},
            FAR: {"score": 0.0, "passed": 1, "failed": 0},
        },
    }
