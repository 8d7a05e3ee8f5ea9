"""The plugin's fixtures: ``compression`` (the marker's result) and ``compress`` (a callable).

Thin: each resolves what the test asked for and hands it to the session's runner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ..budgets import BudgetExceeded
from ..checks.result import CompressionResult
from ..errors import CompressError
from .markers import CALL_SIGNATURE, CheckRequest, bind_call, call_label, call_request
from .session import CompressSession
from .stash import CALLS_KEY, REQUEST_KEY, RESULT_KEY, SESSION_KEY

DISABLED_REASON = "compression checks disabled by --compress-disable"


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

    ``compress(model=None, data=None, *, ...)`` takes every argument of the marker (its
    signature is ``CALL_SIGNATURE``, made from the marker's): the recipe, the budgets, the
    adjustments, and the fixture arguments ``model``, ``data``, ``metric``,
    ``calibration_data``, ``recover`` and ``recover_data``, each a fixture's name or the
    object itself (None: the marker's default fixture). Returns the ``CompressionResult``;
    with budgets, raises ``BudgetExceeded`` (an ``AssertionError``) when one breaks.

    Example::

        def test_sweep(compress):
            for bits in (8, 6, 4):
                r = compress(quantize=f"int{bits}")
                assert r.accuracy_drop <= 0.01, r.explain()
    """
    state = request.config.stash[SESSION_KEY]
    if state.options.disable:
        pytest.skip(DISABLED_REASON)

    def compress(*args: Any, **kwargs: Any) -> CompressionResult:
        __tracebackhide__ = True
        arguments = bind_call(args, kwargs)
        check = call_request(arguments)
        model, data = arguments.get("model"), arguments.get("data")
        result = state.run(request, check, check_id=_call_id(request, check, model, data))
        if not result.passed:
            raise BudgetExceeded(result.explain(), result)
        return result

    compress.__signature__ = CALL_SIGNATURE  # type: ignore[attr-defined]  # for help()
    return compress


def _run(
    state: CompressSession, request: pytest.FixtureRequest, check: CheckRequest, check_id: str
) -> CompressionResult:
    try:
        return state.run(request, check, check_id=check_id)
    except CompressError as error:  # the engine's errors name the culprit and the fix
        message = f"pytest-compress could not run the check of {check_id}: {error}"
    # outside the except block: the message once, not chained after the error it repeats
    pytest.fail(message, pytrace=False)


def _call_id(request: pytest.FixtureRequest, check: CheckRequest, model: Any, data: Any) -> str:
    """A stable id for a check run by the callable: the test's node id and what it checked.

    The same label twice in one test gets ``#2``, ``#3``... so each call has its own entry.
    """
    label = call_label(check, model, data)
    calls = request.node.stash.setdefault(CALLS_KEY, {})
    calls[label] = calls.get(label, 0) + 1
    suffix = f" #{calls[label]}" if calls[label] > 1 else ""
    return f"{request.node.nodeid} [{label}{suffix}]"
