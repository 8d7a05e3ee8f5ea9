"""The pytest plugin (the ``pytest11`` entry point ``compress``): its hooks and fixtures.

Thin on purpose: the options live in ``options``, the marker's parsing in ``markers``,
the fixtures in ``fixtures``, the session's state, baseline and reports in ``session``,
and the check itself in the pytest-free ``checks`` layer. torch is imported only when a
check runs, so ``pytest --help`` does not pay for it here.

Usage (conftest.py defines ``compress_model`` and ``compress_data``)::

    @pytest.mark.compress(quantize="int8", max_accuracy_drop=0.005, max_size_ratio=0.3)
    def test_int8_within_budget(): ...
"""

from __future__ import annotations

from typing import Any

import pytest

from ..budgets import BudgetExceeded
from ..metrics import unknown_hint
from .fixtures import DISABLED_REASON, compress, compression
from .markers import DEFAULT_METRIC_FIXTURE, MARKER_LINE, CheckRequest, MarkerError, parse_marker
from .options import add_options, read_options
from .session import CompressSession
from .stash import INVALID_KEY, REQUEST_KEY, RESULT_KEY, SESSION_KEY

__all__ = ["compress", "compression"]  # the fixtures, found by pytest as this module's names


# --- configuration and collection ------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_LINE)
    session = CompressSession(config, read_options(config))
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(session, "pytest-compress-session")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Validate every ``compress`` marker, and make each marked test run its check.

    All invalid markers are reported at once, in one ``pytest.UsageError``.
    """
    state = config.stash[SESSION_KEY]
    problems: list[tuple[pytest.Item, str]] = []
    for item in items:
        markers = list(item.iter_markers("compress"))
        if not markers:
            continue
        if len(markers) > 1:
            message = (
                f"{item.nodeid}: {len(markers)} compress markers apply to this test (from the "
                "test, its class or its module); use one marker per test, or the compress "
                "fixture for several checks in one test"
            )
            problems.append((item, message))
            continue
        try:
            check = parse_marker(markers[0].args, markers[0].kwargs)
        except MarkerError as error:
            problems.append((item, f"{item.nodeid}: {error}"))
            continue
        missing = (
            _missing_recover_fixtures(item, check)
            or _missing_metric(item, check)
            or _missing_compressor(item, check)
        )
        if missing:
            problems.append((item, f"{item.nodeid}: {missing}"))
            continue
        item.stash[REQUEST_KEY] = check
        if state.options.disable:
            item.add_marker(pytest.mark.skip(reason=DISABLED_REASON))
        elif "compression" not in getattr(item, "fixturenames", ("compression",)):
            # The check runs in the `compression` fixture, so a marked test that does not
            # ask for the result gets it anyway, before its body.
            item.fixturenames.append("compression")  # type: ignore[attr-defined]
    if problems and not state.is_worker:
        raise pytest.UsageError(
            "invalid @pytest.mark.compress (pytest-compress):\n  "
            + "\n  ".join(message for _, message in problems)
        )
    # An xdist worker cannot end the session with a usage error (the controller reports it
    # as a crash), so there each test with an invalid marker errors at setup instead.
    for item, message in problems:
        item.stash[INVALID_KEY] = f"invalid @pytest.mark.compress (pytest-compress): {message}"


def _missing_recover_fixtures(item: pytest.Item, check: CheckRequest) -> str | None:
    """Why ``recover=`` cannot run (its fixture, or its data fixture, is not defined), or None.

    Checked at collection, as the other arguments, so a misspelt name is not found out
    only after the model was compressed.
    """
    fixtures = check.fixtures
    if fixtures.recover is None:
        return None
    manager = item.session._fixturemanager
    for argument, name, forms in (
        ("recover", fixtures.recover, "a fixture returning a callable (model, data) -> model"),
        ("recover_data", fixtures.recover_data, "a fixture giving the training batches"),
    ):
        if not manager.getfixturedefs(name, item):
            return f"{argument}: no fixture named {name!r} is visible to this test; name {forms}"
    return None


def _missing_compressor(item: pytest.Item, check: CheckRequest) -> str | None:
    """Why ``compressor=`` names no fixture visible to the test, or None."""
    name = check.fixtures.compressor
    if name is None or item.session._fixturemanager.getfixturedefs(name, item):
        return None
    return (
        f"compressor: no fixture named {name!r} is visible to this test; name a fixture "
        "returning a callable (model, calibration_data) -> nn.Module or Compressed(...)"
    )


def _missing_metric(item: pytest.Item, check: CheckRequest) -> str | None:
    """Why ``metric=`` names nothing (no built-in, no fixture visible to the test), or None.

    The default ``compress_metric`` is optional (top-1 accuracy without it).
    """
    name = check.fixtures.metric
    if "metric" in check.given or name == DEFAULT_METRIC_FIXTURE:
        return None
    if item.session._fixturemanager.getfixturedefs(name, item):
        return None
    return (
        f"metric: {name!r} is no built-in metric and no fixture of that name is visible to "
        f"this test; {unknown_hint(name)}, or name a fixture giving a metric"
    )


# --- running: the verdict of a marked test fails the test, not the session -------------


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    message = item.stash.get(INVALID_KEY, None)
    if message is not None:
        pytest.fail(message, pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    result = item.stash.get(RESULT_KEY, None)
    if result is not None and not result.passed:
        raise BudgetExceeded(result.explain(), result)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    error = call.excinfo.value if call.excinfo is not None else None
    # Only the verdict raised by pytest_runtest_call above: the message says everything,
    # and a traceback into the plugin would only hide it.
    if (
        call.when == "call"
        and isinstance(error, BudgetExceeded)
        and error.result is item.stash.get(RESULT_KEY, None)
    ):
        report.longrepr = str(error)
    return report
