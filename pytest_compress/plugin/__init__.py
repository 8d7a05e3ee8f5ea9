"""pytest glue for pytest-compress: options, the ``compress`` marker, the fixtures.

Thin on purpose: validation lives in ``markers``, the check in ``check``, the session's
state and reports in ``session``. torch is imported only when a check runs, so
``pytest --help`` does not pay for it here.

Usage (conftest.py defines ``compress_model`` and ``compress_data``)::

    @pytest.mark.compress(quantize="int8", max_accuracy_drop=0.005, max_size_ratio=0.3)
    def test_int8_within_budget(): ...
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ..budgets import BudgetExceeded
from ..checks.result import CompressionResult
from .markers import MARKER_LINE, MarkerError, call_label, call_request, parse_marker
from .markers import CheckRequest as _CheckRequest
from .session import CompressSession, Options

REQUEST_KEY = pytest.StashKey[_CheckRequest]()
RESULT_KEY = pytest.StashKey[CompressionResult]()
CALLS_KEY = pytest.StashKey[dict[str, int]]()
SESSION_KEY = pytest.StashKey[CompressSession]()
INVALID_KEY = pytest.StashKey[str]()
DISABLED_REASON = "compression checks disabled by --compress-disable"


# --- options ---------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("compress", "model compression checks (pytest-compress)")

    def option(name: str, help: str, **kwargs: Any) -> None:
        # default None, so that "not on the command line" falls back to the ini key
        group.addoption(f"--{name}", dest=name.replace("-", "_"), default=None, help=help, **kwargs)
        ini_type = "bool" if kwargs.get("action") == "store_true" else "string"
        parser.addini(name, help=f"{help} (the --{name} option wins over this)", type=ini_type)
        # pytest's own ini keys use underscores (junit_family), so that spelling works too
        parser.addini(name.replace("-", "_"), help=f"same as {name}", type=ini_type)

    option(
        "compress-report", "write a JSON report of every compression check to PATH", metavar="PATH"
    )
    option(
        "compress-markdown",
        "write the compression report as a Markdown table to PATH",
        metavar="PATH",
    )
    option(
        "compress-no-summary", "hide the 'compression report' terminal section", action="store_true"
    )
    option(
        "compress-baseline",
        "the stored baseline file (default: .compress-baseline.json in the rootdir)",
        metavar="PATH",
    )
    option(
        "compress-tolerance",
        "how far (absolute, in the metric's units) a compressed "
        "metric may fall below its baseline (default: 0.005)",
        metavar="FLOAT",
    )
    option(
        "compress-update-baseline", "rewrite the baseline file from this run", action="store_true"
    )
    option(
        "compress-device",
        "where models are evaluated: cpu, cuda or cuda:N (default: cpu)",
        metavar="DEVICE",
    )
    option(
        "compress-disable",
        "skip the compression checks (marked tests and the compress fixture)",
        action="store_true",
    )
    option(
        "compress-no-cache",
        "measure every check, ignoring the results earlier runs stored in pytest's cache "
        "(the fresh results replace them)",
        action="store_true",
    )
    option(
        "compress-cache-mb",
        "keep each data fixture's batches in memory on the evaluation device up to this "
        "many megabytes; larger data is streamed (default: 1024)",
        metavar="MB",
    )
    option(
        "compress-no-sensitivity",
        "do not measure each layer alone when a check fails its accuracy budget",
        action="store_true",
    )
    option(
        "compress-sensitivity-layers",
        "when a check fails its accuracy budget, compress at most this many layers alone "
        "(the largest first) to name the most sensitive ones (default: 20)",
        metavar="N",
    )


def read_options(config: pytest.Config) -> Options:
    """The options, each from the command line if given there, else from the ini file."""
    tolerance = _number(config, "compress-tolerance", 0.005, "0.005")
    cache_mb = _number(config, "compress-cache-mb", 1024.0, "1024 (0 streams every data set)")
    baseline = _path(config, "compress-baseline")
    layers = _number(config, "compress-sensitivity-layers", 20, "20 (at least 1)")
    if layers < 1 or layers != int(layers):
        raise pytest.UsageError(
            "--compress-sensitivity-layers must be a whole number of layers, at least 1, "
            f"such as 20; got {_option(config, 'compress-sensitivity-layers')!r}"
        )
    return Options(
        report=_path(config, "compress-report"),
        markdown=_path(config, "compress-markdown"),
        summary=not _option(config, "compress-no-summary"),
        baseline=baseline or config.rootpath / ".compress-baseline.json",
        tolerance=tolerance,
        update_baseline=bool(_option(config, "compress-update-baseline")),
        device=_option(config, "compress-device") or "cpu",
        disable=bool(_option(config, "compress-disable")),
        cache=not _option(config, "compress-no-cache"),
        cache_mb=cache_mb,
        sensitivity=not _option(config, "compress-no-sensitivity"),
        sensitivity_layers=int(layers),
    )


def _number(config: pytest.Config, name: str, default: float, example: str) -> float:
    """A finite, non-negative number option; ``pytest.UsageError`` naming it otherwise."""
    text = _option(config, name)
    try:
        value = float(text) if text not in (None, "") else default
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise pytest.UsageError(
            f"--{name} must be a non-negative number such as {example}, got {text!r}"
        )
    return value


def _option(config: pytest.Config, name: str) -> Any:
    """The command-line value of ``--name`` if given, else the ini key ``name``."""
    value = config.getoption(name.replace("-", "_"))
    return value if value is not None else _ini(config, name)


def _ini(config: pytest.Config, name: str) -> Any:
    """The ini key ``name`` (``compress-report``) or its underscore twin (``compress_report``)."""
    return config.getini(name) or config.getini(name.replace("-", "_"))


def _path(config: pytest.Config, name: str) -> Path | None:
    # A command-line path is relative to where pytest was started, an ini path to the ini file.
    given = config.getoption(name.replace("-", "_"))
    if given:
        return Path(config.invocation_params.dir, given)
    value = _ini(config, name)
    if not value:
        return None
    base = config.inipath.parent if config.inipath else config.rootpath
    return Path(base, value)


# --- configuration and collection ------------------------------------------------------


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
        missing = _missing_recover_fixtures(item, check)
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


def _missing_recover_fixtures(item: pytest.Item, check: _CheckRequest) -> str | None:
    """Why ``recover=`` cannot run (its fixture, or its data fixture, is not defined), or None.

    Checked at collection, as the other arguments, so a misspelt name is not found out
    only after the model was compressed.
    """
    if check.recover is None:
        return None
    manager = item.session._fixturemanager
    for argument, name, forms in (
        ("recover", check.recover, "a fixture returning a callable (model, data) -> model"),
        ("recover_data", check.recover_data, "a fixture giving the training batches"),
    ):
        if not manager.getfixturedefs(name, item):
            return f"{argument}: no fixture named {name!r} is visible to this test; name {forms}"
    return None


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


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture
def compression(request: pytest.FixtureRequest) -> CompressionResult:
    """The ``CompressionResult`` of the test's ``@pytest.mark.compress`` check.

    Example::

        @pytest.mark.compress(prune=0.8, quantize="int4", max_accuracy_drop=0.02)
        def test_deep_compression(compression):
            assert compression.sparsity >= 0.8, compression.explain()
    """
    check = request.node.stash.get(REQUEST_KEY, None)
    if check is None:
        pytest.fail(
            "the compression fixture is the result of @pytest.mark.compress(...), and "
            f"{request.node.nodeid} has no such marker; use the compress fixture to run a "
            "check from the test body",
            pytrace=False,
        )
    state = request.config.stash[SESSION_KEY]
    result = _run(state, request, check, check_id=request.node.nodeid)
    request.node.stash[RESULT_KEY] = result
    return result


@pytest.fixture
def compress(request: pytest.FixtureRequest) -> Callable[..., CompressionResult]:
    """A callable that runs a compression check from the test body.

    ``compress(model=None, data=None, *, quantize=None, prune=None, higher_is_better=True,
    search=None, keep_float=None, **budgets)``: ``model`` and ``data`` are fixture names or
    objects (default: the ``compress_model`` and ``compress_data`` fixtures). Returns the
    ``CompressionResult``; with budgets, raises ``BudgetExceeded`` (an ``AssertionError``)
    when one breaks.

    Example::

        def test_sweep(compress):
            for bits in (8, 6, 4):
                r = compress(quantize=f"int{bits}")
                assert r.accuracy_drop <= 0.01, r.explain()
    """
    state = request.config.stash[SESSION_KEY]
    if state.options.disable:
        pytest.skip(DISABLED_REASON)

    def compress(
        model: Any = None,
        data: Any = None,
        *,
        quantize: Any = None,
        prune: Any = None,
        higher_is_better: bool = True,
        search: str | None = None,
        keep_float: Any = None,
        **budgets: Any,
    ) -> CompressionResult:
        __tracebackhide__ = True
        check = call_request(
            model,
            data,
            quantize,
            prune,
            higher_is_better,
            budgets,
            search=search,
            keep_float=keep_float,
        )
        result = state.run(
            request,
            check,
            check_id=_call_id(request, check, model, data),
            model=model,
            data=data,
        )
        if not result.passed:
            raise BudgetExceeded(result.explain(), result)
        return result

    return compress


def _run(
    state: CompressSession, request: pytest.FixtureRequest, check: _CheckRequest, check_id: str
) -> CompressionResult:
    try:
        return state.run(request, check, check_id=check_id)
    except ValueError as error:  # the engine's errors name the argument and the valid values
        pytest.fail(
            f"pytest-compress could not run the check of {check_id}: {error}", pytrace=False
        )


def _call_id(request: pytest.FixtureRequest, check: _CheckRequest, model: Any, data: Any) -> str:
    """A stable id for a check run by the callable: the test's node id and what it checked.

    The same label twice in one test gets ``#2``, ``#3``... so each call has its own entry.
    """
    label = call_label(check, model, data)
    calls = request.node.stash.setdefault(CALLS_KEY, {})
    calls[label] = calls.get(label, 0) + 1
    suffix = f" #{calls[label]}" if calls[label] > 1 else ""
    return f"{request.node.nodeid} [{label}{suffix}]"
