"""Problems found in a policy file, and the error that refuses a policy."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy file: where (file, rule id or section, line) and what."""

    path: str
    where: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        place = f"{self.path}:{self.line}" if self.line else self.path
        return f"{place}: {self.where}: {self.message}"


class PolicyError(Exception):
    """A policy file that cannot be used; ``str()`` lists every problem found."""

    def __init__(self, problems):
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid policy")


class SourceLines:
    """Finds the line of a rule, section or key in the TOML text (best effort, for messages only)."""

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.rule_headers = [i + 1 for i, line in enumerate(self.lines) if re.match(r"^\s*\[\[\s*rules\s*\]\]", line)]

    def rule(self, index: int, key: str | None = None) -> int | None:
        if index >= len(self.rule_headers):
            return None
        start = self.rule_headers[index]
        if key is None:
            return start
        end = self.rule_headers[index + 1] if index + 1 < len(self.rule_headers) else len(self.lines) + 1
        return self._key_between(start, end, key) or start

    def section(self, header: str, key: str | None = None) -> int | None:
        wanted = re.compile(r"^\s*\[+\s*" + re.escape(header) + r"\s*\]+")
        for number, line in enumerate(self.lines, start=1):
            if wanted.match(line):
                if key is None:
                    return number
                following = [n for n, text in enumerate(self.lines[number:], start=number + 1) if text.lstrip().startswith("[")]
                end = following[0] if following else len(self.lines) + 1
                return self._key_between(number, end, key) or number
        return None

    def _key_between(self, start, end, key):
        wanted = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
        for number in range(start, min(end, len(self.lines) + 1)):
            if wanted.match(self.lines[number - 1]):
                return number
        return None
