"""torch.compile of an adapted model in a fresh process, where no backend module was imported
before the first compiled forward: one graph, no breaks, fullgraph forward and backward, and no
recompilation on later calls, for a model from inject and for a PeftModel from get_peft_model
(NolaConfig). (tests/test_ops.py compiles after the backends were loaded.)"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    import torch
    from torch import nn
    from torch._dynamo.testing import CompileCounter
    import nola_kernels
    from nola_kernels import backends

    def model(backend):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
        settings = dict(num_basis=8, seed=3, backend=backend)
        if sys.argv[1] == "peft":
            from peft import get_peft_model
            from nola_kernels.peft import NolaConfig

            net = get_peft_model(net, NolaConfig(r=2, target_modules=["0", "2"], **settings))
        else:
            nola_kernels.inject(net, ["0", "2"], rank=2, **settings)
        with torch.no_grad():
            for layer in nola_kernels.adapted_modules(net).values():
                layer.adapters["default"].alpha.normal_()
                layer.adapters["default"].beta.normal_()
        return net

    def grads(net):
        return [p.grad.clone() for p in net.parameters() if p.requires_grad]

    report = {"imported_before": sorted(backends._modules)}
    x = torch.randn(5, 8)
    for backend in ("auto", "torch"):
        eager, compiled = model(backend), model(backend)
        eager(x).square().sum().backward()
        step = torch.compile(compiled, fullgraph=True, backend="aot_eager")
        step(x).square().sum().backward()
        report[backend] = {
            "forward": (step(x) - eager(x)).abs().max().item(),
            "grads": max((a - b).abs().max().item() for a, b in zip(grads(eager), grads(compiled))),
        }
    explained = torch._dynamo.explain(model("auto"))(x)
    report["graphs"], report["breaks"] = explained.graph_count, explained.graph_break_count
    counter = CompileCounter()
    counted = torch.compile(model("auto"), backend=counter)
    for _ in range(3):
        counted(x).sum().backward()
    report["frames_after_3_calls"] = counter.frame_count
    print("REPORT " + json.dumps(report))
    """
)


@pytest.fixture(scope="module", params=["inject", "peft"])
def report(request):
    if request.param == "peft":
        pytest.importorskip("peft")
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, request.param], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("REPORT "))
    return json.loads(line.removeprefix("REPORT "))


def test_no_backend_was_imported_before_the_first_compiled_forward(report):
    assert report["imported_before"] == []


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_fullgraph_forward_and_backward_match_eager(report, backend):
    # The same ops in the same order; the compiled graph may still fuse or reorder float math.
    assert report[backend]["forward"] <= 1e-5
    assert report[backend]["grads"] <= 1e-5


def test_one_graph_without_breaks(report):
    assert (report["graphs"], report["breaks"]) == (1, 0)


def test_later_calls_do_not_recompile(report):
    assert report["frames_after_3_calls"] == 1
