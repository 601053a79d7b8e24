"""
Every ``*.scenario`` file here, played against the real guard service in
memory (``guard.lab.inmemory``): what each side's server receives, what the
release authority is asked and what the audit trail records, in order.
"""

from pathlib import Path

import pytest

from .script import play

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
SCENARIOS = sorted(HERE.glob("*.scenario"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[path.stem for path in SCENARIOS])
def test_scenario(path, tmp_path):
    """The guard does exactly what the scenario file says, and nothing it does not say."""
    play(path, ROOT, tmp_path)
