"""Fixtures shared by the tests; the tiny model itself is in ``tiny.py``."""

import os

import pytest
import torch
from tiny import make_tiny_lm

from models import TransformersLM


@pytest.fixture
def tiny_lm() -> TransformersLM:
    return make_tiny_lm()


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, which stall on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The integration tier (`make test-integration`) must run every test it names:
# there a skip (a missing package, a server that is not built) is a failure.
REQUIRE_ALL = os.environ.get("PPLSCALE_REQUIRE_INTEGRATION") == "1"


def _skip_is_failure(report) -> None:
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in the integration tier, which must run it: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _skip_is_failure(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _skip_is_failure(outcome.get_result())
