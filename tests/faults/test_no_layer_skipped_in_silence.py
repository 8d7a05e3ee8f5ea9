"""No layer is skipped in silence: weights computed at run time are folded or refused by name."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from pytest_compress import ModelError, PruneSpec, compress_model, sparsity
from pytest_compress.engine.apply import copy_model
from pytest_compress.engine.layers import skipped_layers

INPUTS = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))


class Double(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * 2


def torch_pruned() -> nn.Sequential:
    """A model whose big layer was pruned with torch.nn.utils.prune and then evaluated."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2))
    prune.l1_unstructured(model[0], "weight", amount=0.04)
    with torch.no_grad():  # as an evaluation would: the computed weight has no history now
        model(INPUTS)
    return model.eval()


def test_a_torch_pruned_layer_is_folded_in_the_copy_with_the_same_outputs() -> None:
    model = torch_pruned()
    copied = copy_model(model)
    assert isinstance(copied[0].weight, nn.Parameter)
    assert "0.weight_orig" not in copied.state_dict()
    assert torch.equal(copied(INPUTS), model(INPUTS))
    assert "0.weight_orig" in model.state_dict()  # the user's model keeps its pruning


def test_a_torch_pruned_layer_is_pruned_and_counted_by_the_recipe() -> None:
    model = torch_pruned()
    compressed = compress_model(model, prune=PruneSpec(amount=0.8, scope="global"))
    weights = [compressed[0].weight, compressed[2].weight]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.8, abs=1 / 640)  # both layers, not the small one alone
    assert sparsity(compressed).overall == zeros
    assert float((compressed[0].weight == 0).float().mean()) > 0.5


@pytest.mark.parametrize("how", ["parametrize", "torch prune, not folded"])
def test_a_weight_computed_at_run_time_is_refused_by_name(how: str) -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2))
    if how == "parametrize":
        parametrize.register_parametrization(model[1], "weight", Double())
        with pytest.raises(ModelError, match=r"layers \['1'\] compute their weight"):
            compress_model(model, quantize="int8")
    else:
        prune.l1_unstructured(model[1], "weight", amount=0.5)
        with pytest.raises(ModelError, match=r"layers \['1'\].*torch.nn.utils.prune"):
            sparsity(model)  # measuring the user's own model, which nothing folded


def test_a_parametrized_layer_fails_the_check_with_its_name(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        textwrap.dedent(
            """
            import pytest, torch
            from torch import nn
            from torch.nn.utils import parametrize

            torch.set_num_threads(1)

            class Double(nn.Module):
                def forward(self, weight):
                    return weight * 2

            @pytest.fixture(scope="session")
            def compress_model():
                torch.manual_seed(0)
                model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2))
                parametrize.register_parametrization(model[0], "weight", Double())
                return model

            @pytest.fixture(scope="session")
            def compress_data():
                torch.manual_seed(1)
                return [(torch.randn(32, 8), torch.randint(0, 2, (32,)))]
            """
        )
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compress(prune=0.8, min_sparsity=0.8)
        def test_sparse():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--compress-no-summary")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*could not run the check*layers [[]'0'[]] compute their weight*"])


def test_a_keep_float_pattern_that_matches_no_layer_is_an_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        textwrap.dedent(
            """
            import pytest, torch
            from torch import nn

            torch.set_num_threads(1)

            @pytest.fixture(scope="session")
            def compress_model():
                torch.manual_seed(0)
                return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

            @pytest.fixture(scope="session")
            def compress_data():
                torch.manual_seed(1)
                return [(torch.randn(32, 8), torch.randint(0, 2, (32,)))]
            """
        )
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compress(quantize="int4", keep_float=["fc9", "2"], max_accuracy_drop=0.5)
        def test_kept():
            pass

        @pytest.mark.compress(search="sparsity", keep_float="O", max_accuracy_drop=0.5)
        def test_searched():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--compress-no-summary")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*keep_float patterns [[]'fc9'[]] match no compressible layer*[[]'0', '2'[]]*",
            "*keep_float patterns [[]'O'[]] match no compressible layer*",
        ],
        consecutive=False,
    )


def test_every_layer_a_recipe_leaves_out_is_in_the_json_report_with_why(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        textwrap.dedent(
            """
            import pytest, torch
            from torch import nn

            torch.set_num_threads(1)

            class Scaled(nn.Module):  # holds a weight matrix, but is no layer type we know
                def __init__(self):
                    super().__init__()
                    self.weight = nn.Parameter(torch.randn(16, 16) * 0.1)

                def forward(self, x):
                    return x @ self.weight

            @pytest.fixture(scope="session")
            def compress_model():
                torch.manual_seed(0)
                return nn.Sequential(nn.Linear(8, 16), Scaled(), nn.ReLU(), nn.Linear(16, 2))

            @pytest.fixture(scope="session")
            def compress_data():
                torch.manual_seed(1)
                return [(torch.randn(32, 8), torch.randint(0, 2, (32,)))]
            """
        )
    )
    pytester.makepyfile(
        """
        import pytest
        from pytest_compress import QuantSpec

        @pytest.mark.compress(quantize=QuantSpec(bits=8, exclude=["3"]), max_accuracy_drop=0.5)
        def test_int8():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--compress-report=report.json")
    result.assert_outcomes(passed=1)
    (check,) = json.loads((pytester.path / "report.json").read_text())["checks"]
    assert check["skipped_layers"] == {
        "1": "Scaled is not a compressible layer type",
        "3": "left out by the recipe's include/exclude (or keep_float)",
    }


def test_a_weight_matrix_outside_any_compressible_layer_is_named_with_its_module() -> None:
    # nn.MultiheadAttention keeps its q/k/v projection as in_proj_weight, not in a Linear
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.TransformerEncoderLayer(8, 2, 16, batch_first=True))
    compressed = {"0", "1.self_attn.out_proj", "1.linear1", "1.linear2"}
    assert skipped_layers(model, compressed) == {
        "1.self_attn": "MultiheadAttention is not a compressible layer type (in_proj_weight)"
    }
