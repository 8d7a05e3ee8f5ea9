"""Deploying on both real runtimes in a fresh process (first imports included) warns nothing
and writes nothing to stderr, with every warning an error."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys, tempfile, torch
    torch.set_num_threads(1)
    from torch import nn
    from pytest_compress.engine.specs import PruneSpec, QuantSpec
    from pytest_compress.runtimes.onnx_backend import deploy_onnx
    from pytest_compress.runtimes.torchao_backend import deploy_torchao
    assert not {"onnx", "onnxruntime", "torchao"} & set(sys.modules), "imported eagerly"
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(32, 8)
    with tempfile.TemporaryDirectory() as workdir:
        deploy_onnx(model, QuantSpec(bits=8, activation_bits=8), PruneSpec(amount=0.5), x,
                    [x], workdir).predict(x)
        deploy_torchao(model, QuantSpec(bits=4), None, workdir).predict(x)
    print("ok")
    """
)


def test_deploying_warns_nothing_and_prints_nothing_to_stderr():
    run = subprocess.run(
        [sys.executable, "-W", "error", "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "ok\n"
    assert run.stderr == ""
