"""The unit every dataset yields and every verifier reads."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One prompt with whatever its verifier needs to judge a response.

    prompt: the exact text fed to the model (chat template and instruction suffix already applied).
    task:   which verifier judges it ("arithmetic", "math", "code", or a custom name).
    fields: verifier inputs, e.g. {"answer": "57"} for math or {"tests": [...]} for code.
    """

    prompt: str
    task: str
    fields: dict[str, Any] = field(default_factory=dict)
