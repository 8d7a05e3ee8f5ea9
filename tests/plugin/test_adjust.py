"""Search, sensitivity, keep_float and recovery through the marker (pytester)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_compress.engine.apply import compress_model
from pytest_compress.engine.measure import evaluate
from pytest_compress.engine.specs import PruneSpec, QuantSpec
from pytest_compress.tuning.grids import GRIDS, max_evaluations
from tests.plugin_projects import CONFTEST, make_project, read_json


@pytest.fixture(scope="module")
def _optimizer_modules_imported() -> None:
    """Run one Adam step here, outside any pytester run.

    Adam's first step imports torch._dynamo (hundreds of modules). pytester's in-process
    runs forget the modules imported during a run, and importing them again registers
    torch libraries twice (a RuntimeError), so a second run that fine-tunes would fail.
    """
    import torch

    from pytest_compress.tuning.recovery import finetune

    model = torch.nn.Linear(2, 2)
    finetune(epochs=1)(model, [(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))])


SEARCH_TEST = """
import json
import pytest

@pytest.mark.compress(search="{kind}", max_accuracy_drop=0.02{extra})
def test_search(compression):
    with open("found.json", "w") as stream:
        json.dump(compression.search.to_dict(), stream)
"""


def _project_model_and_data():
    """The very model and data of the pytester project's conftest."""
    namespace: dict = {}
    exec(CONFTEST, namespace)
    model = namespace["make_model"]()
    return model, namespace["make_data"](model)


@pytest.mark.parametrize(
    ("kind", "recipe_of"),
    [
        ("sparsity", lambda s: {"prune": {"amount": s, "scope": "global"}}),
        ("threshold", lambda s: {"prune": {"threshold": s}}),
        ("bits", lambda s: {"quantize": {"bits": s}}),
    ],
)
def test_search_finds_the_boundary_through_the_marker(pytester, kind, recipe_of):
    make_project(pytester, SEARCH_TEST.format(kind=kind, extra=""))
    result = pytester.runpytest("--compress-report=report.json")
    result.assert_outcomes(passed=1)
    found = read_json(pytester.path / "found.json")
    assert found["passed"] and 1 <= found["evaluations"] <= max_evaluations(kind) <= 8

    # The boundary, measured independently: the chosen setting holds the budget and the
    # next one on the grid (one step more compression) breaks it.
    model, data = _project_model_and_data()

    def drop(setting):
        spec = recipe_of(setting)
        quantize = QuantSpec(**spec["quantize"]) if "quantize" in spec else None
        prune = PruneSpec(**spec["prune"]) if "prune" in spec else None
        return 1.0 - evaluate(compress_model(model, quantize=quantize, prune=prune), data)

    grid = list(GRIDS[kind])
    chosen = found["chosen"]
    assert drop(chosen) <= 0.02
    if grid.index(chosen) + 1 < len(grid):
        assert drop(grid[grid.index(chosen) + 1]) > 0.02
    entry = read_json(pytester.path / "report.json")["checks"][0]
    assert entry["search"]["chosen"] == chosen
    assert entry["search"]["evaluations"] == found["evaluations"]
    shown = f"search {kind} * {found['evaluations']} evals"
    result.stdout.fnmatch_lines([f"test_project.py::test_search *[[]{shown}[]]*ok"])


def test_search_with_a_fixed_part_and_the_markdown_report(pytester):
    make_project(pytester, SEARCH_TEST.format(kind="sparsity", extra=', quantize="int8"'))
    result = pytester.runpytest("--compress-markdown=report.md")
    result.assert_outcomes(passed=1)
    found = read_json(pytester.path / "found.json")
    assert found["recipe"].startswith("int8 per-channel + prune ")
    table = (pytester.path / "report.md").read_text()
    assert f"search sparsity {found['chosen']:.2f}, {found['evaluations']} evals" in table


def test_min_sparsity_asserts_the_amount_found(pytester):
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(search="sparsity", max_accuracy_drop=0.02, min_sparsity=0.999)
        def test_search():
            pass
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*sparsity *% < 99.9% required",
            "*searched sparsity: no setting passes (* evaluations)",
            "*is the most compression within the metric budgets and still breaks*",
            "*#*sparsity*accuracy*size*verdict",
        ]
    )


def test_no_setting_passes_fails_with_the_trail(pytester):
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(search="bits", max_accuracy_drop=0.0, max_size=10)
        def test_search():
            pass
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*compression budget exceeded for *",
            "*searched bits: no setting passes (* evaluations)",
            "*#*bits*accuracy*size*verdict",
            "*1 *size * > 10 B*",
        ]
    )


def test_the_baseline_records_and_gates_the_chosen_setting(pytester):
    make_project(pytester, SEARCH_TEST.format(kind="sparsity", extra=""))
    pytester.runpytest().assert_outcomes(passed=1)
    path = pytester.path / ".compress-baseline.json"
    document = json.loads(path.read_text())
    (entry,) = document["checks"].values()
    found = read_json(pytester.path / "found.json")
    assert entry["search"] == {
        "search": "sparsity",
        "chosen": found["chosen"],
        "evaluations": found["evaluations"],
    }
    pytester.runpytest().assert_outcomes(passed=1)  # the same setting again: ok

    # one grid step more than found is within the tolerance; two steps is a regression
    entry["search"]["chosen"] = round(found["chosen"] + 0.01, 2)
    path.write_text(json.dumps(document))
    pytester.runpytest().assert_outcomes(passed=1)
    entry["search"]["chosen"] = round(found["chosen"] + 0.02, 2)
    path.write_text(json.dumps(document))
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "compression regressed vs baseline for *",
            "*regressed vs baseline: searched sparsity * is less compression than the recorded *",
            "test_project.py::test_search * REGRESSED*",
        ]
    )


HARSH_CHECK = """
import pytest

@pytest.mark.compress(quantize="int2", prune=0.8, max_accuracy_drop=0.01)
def test_harsh():
    pass
"""


def test_a_failing_accuracy_budget_names_the_most_sensitive_layers(pytester):
    make_project(pytester, HARSH_CHECK)
    result = pytester.runpytest("--compress-report=report.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*most sensitive layers: * pp alone)*"])
    sensitivity = read_json(pytester.path / "report.json")["checks"][0]["sensitivity"]
    # every compressible layer of the project's MLP, each compressed alone
    assert sorted(layer["layer"] for layer in sensitivity["layers"]) == ["0", "2"]
    assert sensitivity["evaluations"] == 2
    drops = [layer["drop"] for layer in sensitivity["layers"]]
    assert drops == sorted(drops, reverse=True) and drops[0] > 0


def test_sensitivity_is_capped_and_can_be_turned_off(pytester):
    make_project(pytester, HARSH_CHECK)
    capped = pytester.runpytest("--compress-sensitivity-layers=1", "--compress-report=r.json")
    capped.stdout.fnmatch_lines(
        ["*most sensitive layers: *; 1 more layers ranked by output error only, not measured"]
    )
    sensitivity = read_json(pytester.path / "r.json")["checks"][0]["sensitivity"]
    # both layers ranked by the proxy, its first measured: the cap counts evaluations
    proxies = sensitivity["proxies"]
    assert sensitivity["ranked_by"] == "proxy" and len(proxies) == 2
    assert proxies[0]["output_error"] >= proxies[1]["output_error"]
    assert [layer["layer"] for layer in sensitivity["layers"]] == [proxies[0]["layer"]]
    assert sensitivity["skipped"] == [proxies[1]["layer"]] and sensitivity["evaluations"] == 1
    pytester.makeini("[pytest]\ncompress_no_sensitivity = true\n")
    off = pytester.runpytest("--compress-report=r.json")
    off.assert_outcomes(failed=1)
    assert "most sensitive layers" not in off.stdout.str()
    assert read_json(pytester.path / "r.json")["checks"][0]["sensitivity"] is None


def test_checks_of_one_recipe_share_one_sensitivity_run(pytester):
    # Counted: the second failing check of the same recipe (another budget) measures its
    # own compressed copy, and reuses the per-layer drops the first one measured.
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(quantize="int2", prune=0.8, max_accuracy_drop=0.01)
        def test_harsh_a():
            pass

        def test_harsh_a_count(forward_calls, compress_data):
            # the float model, its int2 copy, and one copy per layer for the sensitivity
            # (both layers: the cap is 5), after the proxy's pass of the float model over
            # two batches
            assert sum(forward_calls.values()) == (1 + 1 + 2) * len(compress_data) + 2

        @pytest.mark.compress(quantize="int2", prune=0.8, max_accuracy_drop=0.02)
        def test_harsh_b():
            pass

        def test_harsh_b_count(forward_calls, compress_data):
            # float reference and sensitivity shared: only its own compressed copy ran
            assert sum(forward_calls.values()) == (1 + 1 + 2 + 1) * len(compress_data) + 2
        """,
    )
    result = pytester.runpytest("--compress-report=report.json")
    result.assert_outcomes(passed=2, failed=2)
    checks = [c["sensitivity"] for c in read_json(pytester.path / "report.json")["checks"]]
    assert checks[0] == checks[1] and checks[0]["evaluations"] == 2


def test_a_passing_check_measures_no_sensitivity(pytester):
    # Counted, not patched: sensitivity would compress each of the two layers alone and
    # run that copy on every batch. The failing check proves the count would show it.
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(quantize="int8", max_accuracy_drop=0.05)
        def test_ok():
            pass

        def test_ok_count(forward_calls, compress_model, compress_data):
            assert sum(forward_calls.values()) == 2 * len(compress_data)  # float and int8

        @pytest.mark.compress(quantize="int2", prune=0.8, max_accuracy_drop=0.01)
        def test_too_harsh():
            pass

        def test_too_harsh_count(forward_calls, compress_model, compress_data):
            # one more copy, one copy per layer for the sensitivity, and the proxy's pass
            # of the float model over two batches
            assert sum(forward_calls.values()) == (2 + 1 + 2) * len(compress_data) + 2
        """,
    )
    result = pytester.runpytest("--compress-report=report.json")
    result.assert_outcomes(passed=3, failed=1)
    checks = {c["check"]: c for c in read_json(pytester.path / "report.json")["checks"]}
    assert checks["test_project.py::test_ok"]["sensitivity"] is None
    assert checks["test_project.py::test_too_harsh"]["sensitivity"]["evaluations"] == 2


@pytest.mark.parametrize("value", ["0", "-3", "1.5", "many"])
def test_a_bad_sensitivity_layer_count_is_a_usage_error(pytester, value):
    make_project(pytester, HARSH_CHECK)
    result = pytester.runpytest(f"--compress-sensitivity-layers={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--compress-sensitivity-layers must be *"])


FRAGILE = """
import sys
sys.path.insert(0, {root!r})
from tests.models import fragile_model as _fragile


@pytest.fixture(scope="session")
def fragile():
    return _fragile()
"""


def test_keep_float_auto_keeps_the_fragile_layer_and_passes(pytester):
    root = str(Path(__file__).resolve().parents[2])  # the folder holding tests/
    tests = """
        import json
        import pytest

        @pytest.fixture
        def fragile_net(fragile):
            return fragile[0]

        @pytest.fixture
        def fragile_data(fragile):
            return fragile[1]

        @pytest.mark.compress(quantize="int6", keep_float="auto", max_accuracy_drop=0.05,
                              model="fragile_net", data="fragile_data")
        def test_auto(compression):
            assert compression.keep_float.kept == ("fc1",)
            assert compression.quantize.exclude == ("fc1",)
        """
    make_project(pytester, tests, conftest_extra=FRAGILE.format(root=root))
    result = pytester.runpytest("--compress-report=report.json")
    result.assert_outcomes(passed=1)
    entry = read_json(pytester.path / "report.json")["checks"][0]
    assert entry["keep_float"]["kept_float"] == ["fc1"] and entry["keep_float"]["size_cost"] > 0
    assert entry["sensitivity"]["layers"][0]["layer"] == "fc1"
    result.stdout.fnmatch_lines(["*int6 per-channel*[[]float: fc1 (+*)[]]*ok"])


COSTLY = """
import sys
sys.path.insert(0, {root!r})
from tests.models import costly_sensitive_model as _costly


@pytest.fixture(scope="session")
def costly_net():
    return _costly()[0]


@pytest.fixture(scope="session")
def costly_inputs():
    return list(_costly()[1].split(128))  # bare inputs: mse compares with the float outputs
"""


def test_keep_float_auto_keeps_the_cheapest_recovery_and_names_a_simpler_winner(pytester):
    """The big layer hurts more alone, the small one recovers more per byte; int6 on the same
    model is both smaller and better than int4 with a layer kept float, and the report says so."""
    root = str(Path(__file__).resolve().parents[2])
    tests = """
        import pytest

        @pytest.mark.compress(quantize="int4", keep_float="auto", metric="mse",
                              max_accuracy_drop=1.2, model="costly_net", data="costly_inputs")
        def test_int4_mixed(compression):
            assert compression.keep_float.kept == ("small",)

        @pytest.mark.compress(quantize="int6", metric="mse", max_accuracy_drop=1.2,
                              model="costly_net", data="costly_inputs")
        def test_int6():
            pass
        """
    make_project(pytester, tests, conftest_extra=COSTLY.format(root=root))
    result = pytester.runpytest("--compress-report=report.json")
    result.assert_outcomes(passed=2)
    report = read_json(pytester.path / "report.json")
    mixed, int6 = sorted(report["checks"], key=lambda c: c["check"])
    drops = {layer["layer"]: layer["drop"] for layer in mixed["sensitivity"]["layers"]}
    assert drops["big"] > drops["small"] > 0  # by drop alone "big" would be kept float
    assert mixed["keep_float"]["kept_float"] == ["small"]
    assert [c["layer"] for c in mixed["keep_float"]["ranking"]] == ["small", "big"]
    assert int6["compressed_size"] < mixed["compressed_size"]
    assert int6["compressed_metric"] < mixed["compressed_metric"]
    line = (
        "dominated: test_project.py::test_int4_mixed keeps small float, yet "
        "test_project.py::test_int6 (int6 per-channel) is smaller (* < *) and better "
        "(mse * vs *): the simpler recipe wins"
    )
    result.stdout.fnmatch_lines([line])
    assert any(
        note.startswith("dominated: test_project.py::test_int4_mixed") for note in report["notes"]
    )


def test_keep_float_patterns_leave_those_layers_uncompressed(pytester):
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(prune=0.9, keep_float=["2"], max_accuracy_drop=0.99)
        def test_kept(compression):
            assert compression.prune.exclude == ("2",)
        """,
    )
    pytester.runpytest().assert_outcomes(passed=1)


RECOVERY = """
from pytest_compress.tuning.recovery import finetune


@pytest.fixture(scope="session")
def compress_train_data(compress_model):
    return make_data(compress_model, batches=8, seed=7)


@pytest.fixture(scope="session")
def short_finetune():
    return finetune(epochs=2, lr=1e-2)


@pytest.fixture(scope="session")
def unzeroing():
    def recover(model, data):
        seen.append(len(list(data)))
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.01)
        return model
    return recover


seen = []


@pytest.fixture
def recovery_data_seen():
    return seen
"""


@pytest.mark.usefixtures("_optimizer_modules_imported")
def test_recovery_through_the_marker_reports_before_and_after(pytester):
    make_project(
        pytester,
        """
        import pytest
        from pytest_compress.engine.measure import sparsity

        @pytest.mark.compress(prune=0.9, recover="short_finetune", max_accuracy_drop=0.99)
        def test_recovered(compression):
            recovery = compression.recovery
            assert recovery.metric_after > recovery.metric_before
            assert compression.compressed_metric == recovery.metric_after
            assert compression.sparsity >= 0.9
        """,
        conftest_extra=RECOVERY,
    )
    result = pytester.runpytest("--compress-report=report.json")
    result.assert_outcomes(passed=1)
    entry = read_json(pytester.path / "report.json")["checks"][0]
    assert entry["recovery"]["metric_after"] > entry["recovery"]["metric_before"]
    assert entry["recovery"]["unzeroed"] == {}
    result.stdout.fnmatch_lines(["*prune 90%*[[]recovered *% -> *%[]]*ok"])


@pytest.mark.usefixtures("_optimizer_modules_imported")
def test_a_recovery_that_unzeroes_weights_is_caught_and_rezeroed(pytester):
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(prune=0.9, quantize="int8", recover="unzeroing",
                              max_accuracy_drop=0.99)
        def test_recovered(compression, recovery_data_seen):
            assert recovery_data_seen == [8]   # the training batches, not the evaluation data
            assert sum(compression.recovery.unzeroed.values()) > 0
            assert compression.sparsity >= 0.9  # every pruned weight is zero again
            assert "were re-zeroed" in compression.explain()
        """,
        conftest_extra=RECOVERY,
    )
    pytester.runpytest().assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ('search="size", max_accuracy_drop=0.01', "search: search must be one of *'size'"),
        ('search="sparsity", min_sparsity=0.5', "search: *needs a budget that more compression*"),
        ('search="bits"', "search: *needs a budget*got no budget"),
        ('search="sparsity", prune=0.5, max_accuracy_drop=0.01', "search: *conflicts*"),
        ("prune=0.5, min_sparsity=1.5", "min_sparsity: must be a fraction*got 1.5"),
        ('search="sparsity", min_sparsity=-0.1, max_accuracy_drop=0.1', "min_sparsity: *"),
        (
            'prune=0.5, recover="no_such", max_accuracy_drop=0.1',
            "recover: no fixture named 'no_such'*",
        ),
        (
            'prune=0.5, recover="compress_data", recover_data="nope", max_accuracy_drop=0.1',
            "recover_data: no fixture named 'nope'*",
        ),
        ("prune=0.5, keep_float=3, max_accuracy_drop=0.1", "keep_float: keep_float must be*auto*"),
        ("prune=0.5, keep_float=[], max_accuracy_drop=0.1", "keep_float: *"),
    ],
)
def test_bad_values_are_usage_errors_at_collection(pytester, arguments, problem):
    make_project(
        pytester,
        f"""
        import pytest

        @pytest.mark.compress({arguments})
        def test_bad():
            raise RuntimeError("never runs")
        """,
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*test_project.py::test_bad: {problem}"])


def test_the_callable_fixture_searches_too(pytester):
    make_project(
        pytester,
        """
        def test_sweep(compress):
            result = compress(search="bits", max_accuracy_drop=0.02)
            assert result.search.passed and result.search.evaluations <= 3
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_project.py::test_sweep [[]search bits[]]*"])


def test_search_trials_are_cached_and_recovered_checks_are_not(
    pytester, _optimizer_modules_imported
):
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(search="bits", max_accuracy_drop=0.02)
        def test_search():
            pass

        @pytest.mark.compress(prune=0.9, recover="short_finetune", max_accuracy_drop=0.99)
        def test_recovered():
            pass
        """,
        conftest_extra=RECOVERY,
    )
    pytester.runpytest("-p", "cacheprovider").assert_outcomes(passed=2)
    again = pytester.runpytest("-p", "cacheprovider")
    again.assert_outcomes(passed=2)
    # every evaluation of the search is an ordinary check of a concrete recipe: stored;
    # the recovered check depends on the recovery callable and its data: measured again
    again.stdout.fnmatch_lines(
        [
            "test_project.py::test_recovered * [[]recovered *[]]* ok",
            "test_project.py::test_search * [[]search bits *[]]* ok (cached)",
        ]
    )


@pytest.mark.parametrize(
    "recipe",
    ['QuantSpec(bits=6, method="mse")', "QuantSpec(bits=6, group_size=8)"],
)
def test_keep_float_and_sensitivity_work_with_the_new_rounding_and_groups(pytester, recipe):
    root = str(Path(__file__).resolve().parents[2])
    tests = f"""
        import pytest
        from pytest_compress import QuantSpec

        @pytest.fixture
        def fragile_net(fragile):
            return fragile[0]

        @pytest.fixture
        def fragile_data(fragile):
            return fragile[1]

        @pytest.mark.compress(quantize={recipe}, keep_float="auto", max_accuracy_drop=0.05,
                              model="fragile_net", data="fragile_data")
        def test_auto(compression):
            assert compression.keep_float.kept == ("fc1",)
        """
    make_project(pytester, tests, conftest_extra=FRAGILE.format(root=root))
    result = pytester.runpytest("--compress-report=report.json")
    result.assert_outcomes(passed=1)
    entry = read_json(pytester.path / "report.json")["checks"][0]
    assert entry["sensitivity"]["layers"][0]["layer"] == "fc1"
    assert entry["broken_invariants"] == []


def test_the_sensitivity_time_budget_is_an_option_and_the_message_says_it_stopped(pytester):
    make_project(pytester, HARSH_CHECK)
    result = pytester.runpytest("--compress-sensitivity-seconds=0", "--compress-report=r.json")
    result.assert_outcomes(failed=1)
    # a budget of 0 still measures the first layer, then stops
    result.stdout.fnmatch_lines(
        ["*stopped early by the time budget (--compress-sensitivity-seconds): 1 layers*"]
    )
    sensitivity = read_json(pytester.path / "r.json")["checks"][0]["sensitivity"]
    assert sensitivity["evaluations"] == 1 and sensitivity["timed_out"]
    bad = pytester.runpytest("--compress-sensitivity-seconds=soon")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
