"""Starting a lab for a test module: one way, so that a lab that cannot start always says why, with its logs."""

from __future__ import annotations

import pytest


def started(laboratory, what: str = "the lab", ready=None, also_stop=()):
    """
    ``laboratory``, started (and ``ready()`` waited for, when given); when
    either fails, everything is stopped (``laboratory`` and ``also_stop``)
    and the test fails naming ``what``, the error and the tail of every log.
    """
    try:
        laboratory.start()
        if ready is not None:
            ready()
    except Exception as error:  # noqa: BLE001 - any failure to start is reported with the logs
        tails = laboratory.log_tails()
        laboratory.stop()
        for other in also_stop:
            other.stop()
        pytest.fail(f"{what} did not start: {error}\n{tails}", pytrace=False)
    return laboratory
