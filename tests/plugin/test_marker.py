"""The ``compress`` marker end to end, through pytester: budgets, verdicts, the
``compression`` fixture, validation at collection, and what the plugin must not touch."""

from __future__ import annotations

import pytest

from tests.plugin_projects import make_project, measure_recipe

# int2 weights and 80 % pruning break every budget below on the project's model.
HARSH = 'quantize="int2", prune=0.8'


def test_a_marked_test_runs_its_check_and_passes_within_budget(pytester):
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(quantize="int8", max_accuracy_drop=0.01, max_relative_drop=0.01,
                              max_size_ratio=0.5, max_size="1 MB")
        def test_int8():
            pass

        @pytest.mark.compress(prune=0.5, max_accuracy_drop=0.99, min_sparsity=0.5)
        def test_pruned():
            pass
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*= compression report =*",
            "test * recipe * metric * drop * size * ratio * sparsity * verdict",
            "test_project.py::test_int8 * int8 per-channel * 100.0% -> 100.0% * ok",
            "test_project.py::test_pruned * prune 50% (layer, magnitude) * 50.0% * ok",
        ]
    )


@pytest.mark.parametrize(
    ("budget", "line"),
    [
        ("max_accuracy_drop=0.01", "  accuracy 100.0% -> *%: drop * pp > 1.0 pp allowed"),
        ("max_relative_drop=0.05", "  accuracy relative drop *% > 5.0% allowed"),
        ("max_size_ratio=0.05", "  size * kB -> * B: ratio 0.* > 0.05 allowed"),
        ('max_size="500 B"', "  compressed size * B > 500 B allowed"),
        ("min_sparsity=0.9", "  sparsity 80.0% < 90.0% required"),
    ],
)
def test_each_broken_budget_fails_the_test_with_both_values(pytester, budget, line):
    make_project(
        pytester,
        f"""
        import pytest

        @pytest.mark.compress({HARSH}, {budget})
        def test_harsh():
            raise RuntimeError("the body must not run after a broken budget")

        def test_other():
            pass
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)  # the test fails, not the session
    result.stdout.fnmatch_lines(
        [
            "*_ test_harsh _*",
            "compression budget exceeded for int2 per-channel + prune 80% (layer, magnitude):",
            line,
            "  model compress_model, data compress_data, device cpu",
        ]
    )
    result.stdout.fnmatch_lines(["FAILED test_project.py::test_harsh - compression budget *"])
    result.stdout.no_fnmatch_line("*the body must not run*")


def test_every_broken_budget_is_listed_not_only_the_first(pytester):
    make_project(
        pytester,
        f"""
        import pytest

        @pytest.mark.compress({HARSH}, max_accuracy_drop=0.01, max_relative_drop=0.05,
                              max_size_ratio=0.05, max_size=500, min_sparsity=0.9)
        def test_harsh():
            pass
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "compression budget exceeded for *",
            "  accuracy * drop * > 1.0 pp allowed",
            "  accuracy relative drop * > 5.0% allowed",
            "  size * ratio * > 0.05 allowed",
            "  compressed size * > 500 B allowed",
            "  sparsity 80.0% < 90.0% required",
        ]
    )


FIXED_METRIC = """
from pytest_compress.engine.measure import model_metric

@pytest.fixture(scope="session")
def compress_metric():
    def fixed(model, data):  # {before} for the user's model, {after} for a compressed copy
        return {before} if model is ORIGINAL[0] else {after}
    return model_metric(fixed)
"""


@pytest.mark.parametrize(
    ("before", "after", "higher_is_better"),
    [(0.97, 0.95, True), (0.05, 0.07, False)],
    ids=["drop", "increase"],
)
def test_a_metric_change_exactly_at_its_budget_passes(pytester, before, after, higher_is_better):
    # 0.97 - 0.95 and 0.07 - 0.05 both exceed 0.02 by a float rounding error
    assert abs(before - after) > 0.02
    make_project(
        pytester,
        f"""
        import pytest

        @pytest.mark.compress(quantize="int8", higher_is_better={higher_is_better},
                              max_accuracy_drop=0.02, max_relative_drop=0.02 / {before})
        def test_at_budget(compression):
            assert compression.accuracy_drop > 0.02

        @pytest.mark.compress(quantize="int8", higher_is_better={higher_is_better},
                              max_accuracy_drop=0.0199)
        def test_over_budget():
            pass

        @pytest.mark.compress(quantize="int8", higher_is_better={higher_is_better},
                              max_relative_drop=0.0199 / {before})
        def test_over_relative_budget():
            pass
        """,
        conftest_extra=FIXED_METRIC.format(before=before, after=after),
    )
    result = pytester.runpytest("-rA")
    result.assert_outcomes(passed=1, failed=2)
    word = "drop" if higher_is_better else "increase"
    result.stdout.fnmatch_lines(
        [
            "*_ test_over_budget _*",
            f"  fixed {before} -> {after}: {word} 0.02 > 0.0199 allowed",
            "*_ test_over_relative_budget _*",
            f"  fixed relative {word} * > * allowed",
            "PASSED test_project.py::test_at_budget",
        ]
    )


def test_sizes_and_sparsity_exactly_at_their_budgets_pass(pytester):
    exact = measure_recipe(quantize="int4", prune=0.5)
    make_project(
        pytester,
        f"""
        import pytest

        RECIPE = dict(quantize="int4", prune=0.5)

        @pytest.mark.compress(**RECIPE, max_size_ratio={exact["size_ratio"]!r},
                              max_size={exact["compressed_size"]},
                              min_sparsity={exact["sparsity"]!r})
        def test_at_budgets(compression):
            assert compression.compressed_size == {exact["compressed_size"]}

        @pytest.mark.compress(**RECIPE, max_size_ratio={exact["size_ratio"] * (1 - 1e-6)!r})
        def test_ratio_over():
            pass

        @pytest.mark.compress(**RECIPE, max_size={exact["compressed_size"] - 1})
        def test_size_over():
            pass

        @pytest.mark.compress(**RECIPE, min_sparsity={exact["sparsity"] + 1e-6!r})
        def test_sparsity_under():
            pass
        """,
    )
    result = pytester.runpytest("-rA")
    result.assert_outcomes(passed=1, failed=3)
    size = exact["compressed_size"]
    result.stdout.fnmatch_lines(
        [
            "PASSED test_project.py::test_at_budgets",
            "FAILED test_project.py::test_ratio_over*",
            "FAILED test_project.py::test_size_over*",
            "FAILED test_project.py::test_sparsity_under*",
        ]
    )
    # one byte over: the rendering falls back to exact bytes so the numbers differ
    # one byte over: the numbers get as many digits as it takes to differ
    result.stdout.fnmatch_lines(
        [f"  compressed size {size / 1000:.3f} kB > {(size - 1) / 1000:.3f} kB allowed"]
    )
    result.stdout.fnmatch_lines(["  sparsity 50.0000% < 50.0001% required"])


def test_a_lower_is_better_metric_counts_the_increase_as_the_drop(pytester):
    make_project(
        pytester,
        """
        import pytest

        LOSS = dict(quantize="int2", higher_is_better=False)

        @pytest.mark.compress(**LOSS, max_accuracy_drop=0.001)
        def test_loss_rises_too_much():
            pass

        @pytest.mark.compress(**LOSS, max_accuracy_drop=100.0)
        def test_loss_rise_within_budget(compression):
            assert compression.compressed_metric > compression.float_metric
            assert compression.accuracy_drop > 0

        @pytest.mark.compress(quantize="int2", higher_is_better=True, max_accuracy_drop=0.001)
        def test_read_as_higher_is_better_the_rise_is_a_gain(compression):
            assert compression.accuracy_drop < 0
        """,
        conftest_extra="""
        @pytest.fixture(scope="session")
        def compress_metric():
            def error_rate(outputs, targets):
                return (outputs.argmax(1) != targets).sum(), len(targets)
            return error_rate
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_loss_rises_too_much _*",
            "compression budget exceeded for int2 per-channel:",
            "  error_rate 0 -> 0.0*: increase 0.0* > 0.001 allowed",
        ]
    )


def test_the_compression_fixture_holds_the_result(pytester):
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(quantize="int4", prune=0.8, max_accuracy_drop=0.99)
        def test_result(compression):
            assert compression.passed and compression.violations == []
            assert compression.recipe == "int4 per-channel + prune 80% (layer, magnitude)"
            assert compression.quantize.bits == 4 and compression.prune.amount == 0.8
            assert compression.float_metric == 1.0
            assert compression.accuracy_drop == 1.0 - compression.compressed_metric
            assert compression.relative_drop == compression.accuracy_drop
            assert compression.size_ratio == compression.compressed_size / compression.float_size
            assert 0.79 < compression.sparsity < 0.81
            assert compression.budgets.max_accuracy_drop == 0.99
            assert {"compress", "evaluate", "total"} <= set(compression.timings)
            assert compression.explain().startswith(
                "compression within budget for int4 per-channel + prune 80%"
            )
        """,
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_the_compression_fixture_without_a_marker_is_an_error(pytester):
    make_project(
        pytester,
        """
        def test_unmarked(compression):
            pass
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*the compression fixture is the result of @pytest.mark.compress(...)*use the compress*"]
    )


def test_model_and_data_arguments_pick_other_fixtures(pytester):
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(quantize="int8", max_accuracy_drop=0.05, model="student",
                              data="val_loader")
        def test_student(compression):
            assert compression.model == "student" and compression.data == "val_loader"
            assert compression.float_size < 4000  # the default model has 7.6 kB

        @pytest.mark.compress(quantize="int8", max_accuracy_drop=0.05, model="missing")
        def test_missing_model():
            pass
        """,
        conftest_extra="""
        @pytest.fixture(scope="session")
        def student():
            torch.manual_seed(3)
            return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))

        @pytest.fixture(scope="session")
        def val_loader(student):
            return make_data(student, seed=5)
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*no fixture named 'missing' for the model; define it*model=\"...\"*",
            "test_project.py::test_student * int8 per-channel *ok",
        ]
    )


def test_an_iterator_as_data_is_refused_with_a_reason(pytester):
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(quantize="int8", max_accuracy_drop=0.05, data="once")
        def test_once():
            pass
        """,
        conftest_extra="""
        @pytest.fixture
        def once(compress_data):
            return iter(compress_data)
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*could not run the check of test_project.py::test_once: the data is an iterator*"]
    )


def test_the_float_model_is_evaluated_once_for_several_checks(pytester):
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(quantize="int8", max_accuracy_drop=0.99)
        def test_a():
            pass

        @pytest.mark.compress(quantize="int4", max_accuracy_drop=0.99)
        def test_b():
            pass

        def test_c(compress):
            compress(prune=0.5)

        def test_zz_count(forward_calls, compress_model, compress_data):
            batches = len(compress_data)
            assert forward_calls[id(compress_model)] == batches  # the float model: once
            assert sum(forward_calls.values()) == (3 + 1) * batches  # K checks: K + 1 passes
        """,
    )
    pytester.runpytest().assert_outcomes(passed=4)


@pytest.mark.parametrize("mode", ["off", "on"])
def test_the_users_model_is_never_modified(pytester, mode):
    make_project(
        pytester,
        """
        import pytest
        import torch

        @pytest.mark.compress(quantize="int4", prune=0.8, max_accuracy_drop=0.99)
        def test_deep():
            pass

        @pytest.mark.compress(quantize="w8a8", prune="2:4", max_accuracy_drop=0.99)
        def test_activations():
            pass

        def test_zz_unchanged(compress_model, snapshot):
            assert compress_model.training is True
            assert all(module.training for module in compress_model.modules())
            now = compress_model.state_dict()
            assert now.keys() == snapshot.keys()
            assert all(torch.equal(now[key], snapshot[key]) for key in now)
            assert not any(m._forward_hooks or m._forward_pre_hooks
                           for m in compress_model.modules())
        """,
        conftest_extra="""
        SNAPSHOT = {}

        @pytest.fixture(scope="session")
        def compress_model():
            model = make_model()
            model.train()
            SNAPSHOT.update({k: v.clone() for k, v in model.state_dict().items()})
            ORIGINAL.append(model)
            return model

        @pytest.fixture
        def snapshot():
            return SNAPSHOT
        """,
    )
    pytester.runpytest(f"--compress-low-memory={mode}").assert_outcomes(passed=3)


def test_the_calibration_fixture_is_used_for_activation_ranges(pytester):
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(quantize="w8a8", max_accuracy_drop=0.99)
        def test_w8a8(compression, calibration_reads):
            assert compression.recipe.startswith("w8a8")
            assert calibration_reads["n"] > 0
        """,
        conftest_extra="""
        READS = {"n": 0}

        class Counting:
            def __init__(self, batches):
                self.batches = batches
            def __iter__(self):
                READS["n"] += 1
                return iter(self.batches)

        @pytest.fixture(scope="session")
        def compress_calibration_data(compress_data):
            return Counting([x for x, _ in compress_data[:2]])

        @pytest.fixture
        def calibration_reads():
            return READS
        """,
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_strict_markers_knows_the_compress_marker(pytester):
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(quantize="int8", max_accuracy_drop=0.05)
        def test_int8():
            pass
        """,
    )
    pytester.runpytest("--strict-markers").assert_outcomes(passed=1)
    # `pytest --markers` documents every argument with its default, written out here by
    # hand (as README.md documents them), not read back from the code that prints it
    markers = pytester.runpytest("--markers")
    markers.stdout.fnmatch_lines([f"@pytest.mark.{DOCUMENTED_MARKER}: quantize and/or prune *"])


DOCUMENTED_MARKER = (
    "compress(quantize=None, prune=None, max_accuracy_drop=None, max_relative_drop=None, "
    "max_size_ratio=None, max_size=None, min_sparsity=None, max_fidelity_gap=None, "
    "max_latency_ratio=None, max_latency=None, model='compress_model', "
    "data='compress_data', higher_is_better=True, metric='compress_metric', "
    "calibration_data='compress_calibration_data', runtime='simulate', compressor=None, "
    "verify=True, "
    "search=None, "
    "keep_float=None, recover=None, recover_data='compress_train_data')"
)


# --- every bad marker is a usage error at collection, naming the test and the argument ---


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ('"int8", max_accuracy_drop=0.01', "positional arguments: *keyword arguments only*"),
        (
            'quantize="int8", max_acuracy_drop=0.01',
            "max_acuracy_drop: unknown argument (did you mean max_accuracy_drop?)*valid*",
        ),
        ('quantize="int8", max_accuracy_drop="1%"', "max_accuracy_drop: must be a number*"),
        ('quantize="int8", max_size_ratio=-0.1', "max_size_ratio: must not be negative*"),
        ('quantize="int9x", max_accuracy_drop=0.01', "quantize: *int2*int16*w8a8*"),
        ("prune=80, max_accuracy_drop=0.01", "prune: *0 < amount < 1*2:4*"),
        ('quantize="int8", max_size="2 XB"', 'max_size: must be an int of bytes*"1.5 MiB"*'),
        ('quantize="int8", min_sparsity=2', "min_sparsity: *between 0 and 1*"),
        ('quantize="int8", max_size_ratio=0.3, model=None', "model: *name of a fixture*"),
        ('quantize="int8", max_size_ratio=0.3, higher_is_better="no"', "higher_is_better: *"),
        ('quantize="int8"', "budget: none given, so the check cannot fail; give at least one*"),
        ("max_accuracy_drop=0.01", "quantize/prune: nothing to compress*"),
    ],
)
def test_an_invalid_marker_is_a_usage_error_at_collection(pytester, marker, expected):
    make_project(
        pytester,
        f"""
        import pytest

        @pytest.mark.compress({marker})
        def test_bad():
            pass
        """,
    )
    result = pytester.runpytest("--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: invalid @pytest.mark.compress (pytest-compress):",
            f"  test_project.py::test_bad: {expected}",
        ]
    )


def test_all_invalid_markers_are_reported_together(pytester):
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(quantize="int8", max_accuracy_drop=-1)
        def test_one():
            pass

        @pytest.mark.compress(quantize="int8", max_size="lots")
        def test_two():
            pass
        """,
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "  test_project.py::test_one: max_accuracy_drop*",
            "  test_project.py::test_two: max_size*",
        ]
    )


@pytest.mark.parametrize("where", ["decorators", "module"])
def test_two_compress_markers_on_one_test_are_a_usage_error(pytester, where):
    module_mark = (
        'pytestmark = pytest.mark.compress(quantize="int8", max_accuracy_drop=0.1)'
        if where == "module"
        else ""
    )
    second = (
        "" if where == "module" else '@pytest.mark.compress(quantize="int4", max_accuracy_drop=0.1)'
    )
    make_project(
        pytester,
        f"""
        import pytest

        {module_mark}

        {second}
        @pytest.mark.compress(quantize="int2", max_accuracy_drop=0.1)
        def test_twice():
            pass
        """,
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["  test_project.py::test_twice: 2 compress markers apply to this test*compress fixture*"]
    )


def test_metric_and_calibration_data_arguments_name_other_fixtures(pytester):
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(quantize="w8a8", max_accuracy_drop=0.99, model="student",
                              data="val_loader", calibration_data="student_calibration",
                              metric="always_half")
        def test_student(compression, reads):
            assert compression.float_metric == 0.5 and compression.compressed_metric == 0.5
            assert set(reads) == {"student_calibration"}

        @pytest.mark.compress(quantize="w8a8", max_accuracy_drop=0.99, model="student",
                              data="val_loader")
        def test_student_default_calibration(compression, reads):
            # compress_calibration_data belongs to compress_data: other data calibrates itself
            assert "default_calibration" not in reads

        @pytest.mark.compress(quantize="w8a8", max_accuracy_drop=0.99)
        def test_default_model(compression, reads):
            assert reads["default_calibration"] > 0
        """,
        conftest_extra="""
        READS = {}

        class Counting:
            def __init__(self, name, batches):
                self.name, self.batches = name, batches
            def __iter__(self):
                READS[self.name] = READS.get(self.name, 0) + 1
                return iter(self.batches)

        @pytest.fixture(scope="session")
        def student():
            torch.manual_seed(3)
            return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))

        @pytest.fixture(scope="session")
        def val_loader(student):
            return make_data(student, seed=5)

        @pytest.fixture(scope="session")
        def student_calibration(val_loader):
            return Counting("student_calibration", [x for x, _ in val_loader[:1]])

        @pytest.fixture(scope="session")
        def compress_calibration_data(compress_data):
            return Counting("default_calibration", [x for x, _ in compress_data[:1]])

        @pytest.fixture(scope="session")
        def always_half():
            return lambda outputs, targets: (0.5 * len(targets), len(targets))

        @pytest.fixture
        def reads():
            return READS
        """,
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=3)


def test_a_metric_naming_no_fixture_and_no_builtin_is_a_usage_error(pytester):
    # found at collection, as recover=: not after the model was compressed
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(quantize="int8", max_accuracy_drop=0.99, metric="missing_metric")
        def test_missing_metric():
            pass
        """,
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*test_missing_metric: metric: 'missing_metric' is no built-in metric and no fixture*"]
    )
