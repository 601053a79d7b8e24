"""A guard-mode lab with a policy file per side and an audit trail, for policy tests."""

from __future__ import annotations

import json
import time
from pathlib import Path

from guard.lab import topology
from guard.lab.topology import Lab, Mode, render_guard_config


class PolicyLab(Lab):
    """The guard-mode lab, judging red->blue with ``red_policy`` and blue->red with ``blue_policy``."""

    def __init__(self, folder, red_policy: str, blue_policy: str, authentication="certificate", extra_config=""):
        super().__init__(Mode.GUARD, authentication, folder=folder, guard_log_level="info")
        self.policy_texts = {"red": red_policy, "blue": blue_policy}
        self.extra_config = extra_config
        self.policy_files = {}
        self.audit_file = None

    def _start_guard(self) -> None:
        for side, text in self.policy_texts.items():
            self.policy_files[side] = self.folder / f"{side}-policy.toml"
            self.policy_files[side].write_text(text)
        self.audit_file = self.folder / "audit.jsonl"
        self.guard_config = self.folder / "guard.toml"
        text = render_guard_config(self.pki, self.authentication, self.policy_files["red"], "info")
        text = text.replace("[guard]\n", f"[guard]\naudit = {json.dumps(str(self.audit_file))}\n", 1)
        marker = f"policy = {json.dumps(str(self.policy_files['red']))}"
        first = text.index(marker)
        second = text.index(marker, first + 1)
        text = text[:second] + f"policy = {json.dumps(str(self.policy_files['blue']))}" + text[second + len(marker):]
        self.guard_config.write_text(text + "\n" + self.extra_config.format(folder=self.folder))
        arguments = [self.python, "-m", "guard", "run", "--config", str(self.guard_config)]
        self._spawn("guard", arguments, [(topology.GUARD_RED_FACING, topology.S2S_PORT),
                                         (topology.GUARD_BLUE_FACING, topology.S2S_PORT)], 20.0)

    def guard_pid(self) -> int:
        return self.intermediary.process.pid

    def audit_records(self) -> list[dict]:
        if self.audit_file is None or not self.audit_file.exists():
            return []
        return [json.loads(line) for line in self.audit_file.read_text().splitlines() if line.strip()]

    def guard_log(self) -> str:
        return Path(self.intermediary.log_path).read_text()


def wait_for(predicate, timeout, interval=0.1):
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
