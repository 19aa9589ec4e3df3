"""The drop-in for the official NOLA layers (nola_kernels.compat.official) beside a
re-implementation of the official ones (official_layers.py): same construction draws, same
state-dict keys, same outputs and gradients with torch's CPU generator and with a GPU's layout
emulated, both uniform rules in bfloat16, the global generator left as the official code leaves
it, and clear refusals."""

import pytest
import torch
from numerics import rel_err, rounding_bound
from official_layers import Draw, OfficialLoRA, OfficialNOLALinear

from nola_kernels.compat.official import GenerateParams, Generation, LoRA, NOLALinear, official_basis_of
from nola_kernels.memory import peak_memory
from nola_kernels.official_rng import CudaLayout

IN, OUT, RANK, K, ALPHA = 40, 24, 4, 16, 2.0
BATCH = (2, 5)
TOKENS = BATCH[0] * BATCH[1]
LAYOUT = CudaLayout(1, 256)  # T = 256 threads: bases of a few thousand entries span many loop steps
WHOLE = 1 << 30  # block_entries for one block per basis
SMALL = 300  # block_entries for several blocks per basis


def layer_pair(draw, seed=3, dtype=torch.float32, **generation):
    """The official LoRA and the drop-in, built from the same global seed, with fresh coefficients
    and dense weights (the official ones start at zero) copied from the first to the second."""
    torch.manual_seed(seed)
    official = OfficialLoRA(IN, OUT, use_nola=True, num_basis=K, rank=RANK, alpha=ALPHA, draw=draw)
    torch.manual_seed(seed)
    ours = LoRA(IN, OUT, use_nola=True, num_basis=K, rank=RANK, alpha=ALPHA, **generation)
    with torch.no_grad():
        for layer in (official.lora_A, official.lora_B):
            layer.coefficients.normal_()
            layer.weight.normal_(0, 0.2)
    ours.load_state_dict(official.state_dict(), strict=True)
    return official.to(dtype), ours.to(dtype)


def run(module, x, grad, rng_seed=11):
    """Output, input gradient and the coefficients' gradients of one forward and backward, and
    the next draws of the global generator afterwards."""
    torch.manual_seed(rng_seed)
    x = x.clone().requires_grad_()
    y = module(x)
    y.backward(grad)
    after = torch.rand(4)
    return y.detach(), x.grad, module.lora_A.coefficients.grad, module.lora_B.coefficients.grad, after


def float64_run(module, draw, x, grad):
    """run()'s numbers in float64 from the module's parameter values and the official bases in
    its dtype (the values both implementations use)."""
    coefficients, factors = [], []
    for layer in (module.lora_A, module.lora_B):
        c = layer.coefficients.detach().double().requires_grad_()
        basis = draw.basis(layer.seed, K, layer.out_features, layer.in_features, layer.coefficients).double()
        coefficients.append(c)
        factors.append(torch.einsum("b,boi->oi", c, basis) + layer.weight.double())
    x = x.double().requires_grad_()
    y = (x @ factors[0].t()) @ factors[1].t() * module.scale
    y.backward(grad.double())
    return y.detach(), x.grad, coefficients[0].grad, coefficients[1].grad


def inputs(dtype):
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(*BATCH, IN, generator=generator).to(dtype)
    return x, torch.randn(*BATCH, OUT, generator=generator).to(dtype)


CASES = [
    pytest.param(Draw(), dict(layout="generator", block_entries=WHOLE), True, id="cpu-generator-one-block"),
    pytest.param(Draw(), dict(block_entries=SMALL), False, id="cpu-default-layout-blocks"),
    pytest.param(Draw(LAYOUT), dict(layout=LAYOUT, block_entries=WHOLE), True, id="gpu-layout-one-block"),
    pytest.param(Draw(LAYOUT), dict(layout=LAYOUT, block_entries=SMALL), False, id="gpu-layout-blocks"),
    pytest.param(Draw(LAYOUT), dict(layout=LAYOUT), False, id="gpu-layout-ops"),  # the official family of the ops
]


@pytest.mark.parametrize("draw, generation, same_order", CASES)
def test_outputs_gradients_and_global_generator_match_the_official_layer(draw, generation, same_order):
    official, ours = layer_pair(draw, **generation)
    x, grad = inputs(torch.float32)
    expected = run(official, x, grad)
    computed = run(ours, x, grad)
    reference = float64_run(official, draw, x, grad)
    # Forward and the input gradient: the same sums in the same order when the mix is one einsum
    # over the whole basis; the coefficients' gradients: another BLAS call than the official one.
    bounds = [rounding_bound(torch.float32, K, IN, RANK), rounding_bound(torch.float32, OUT, RANK, K, IN)]
    bounds += [rounding_bound(torch.float32, OUT, TOKENS, RANK * IN), rounding_bound(torch.float32, TOKENS, OUT * RANK)]
    names = ("y", "x.grad", "A", "B")
    for name, ours_value, official_value, exact, bound in zip(
        names, computed[:4], expected[:4], reference, bounds, strict=True
    ):
        assert rel_err(official_value, exact) <= bound, name
        assert rel_err(ours_value, exact) <= bound, name
        if same_order and name in ("y", "x.grad"):
            assert torch.equal(ours_value, official_value), name
    assert torch.equal(computed[-1], expected[-1])  # the global generator reseeded as the official code does


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    "draw, generation",
    [(Draw(), Generation(block_entries=SMALL)), (Draw(LAYOUT), Generation(LAYOUT, block_entries=SMALL)),
     (Draw(LAYOUT, "legacy"), Generation(LAYOUT, "legacy", block_entries=SMALL))],
    ids=["cpu-generator", "gpu-layout", "gpu-layout-legacy"],
)  # fmt: skip
def test_the_basis_is_the_official_one_bit_for_bit(draw, generation, dtype):
    coefficients = torch.randn(K, dtype=dtype)
    seed = 8_765_432_109  # above 2^32: both key words
    basis = official_basis_of(coefficients, OUT, IN, seed, generation)
    blocks = list(basis.blocks(coefficients.device))
    assert len(blocks) == K  # SMALL < OUT * IN: one matrix a block
    generated = torch.cat([block for _, _, block in blocks]).to(dtype)
    assert torch.equal(generated, draw.basis(seed, K, OUT, IN, coefficients))


@pytest.mark.parametrize("uniform_rule", ["current", "legacy"])
def test_bfloat16_under_both_uniform_rules(uniform_rule):
    draw = Draw(LAYOUT, uniform_rule)
    official, ours = layer_pair(draw, dtype=torch.bfloat16, layout=LAYOUT, uniform_rule=uniform_rule, block_entries=SMALL)
    x, grad = inputs(torch.bfloat16)
    expected, computed = run(official, x, grad), run(ours, x, grad)
    reference = float64_run(official, draw, x, grad)
    bound = rounding_bound(torch.bfloat16, K, IN, RANK, OUT) + rounding_bound(torch.float32, IN * OUT)
    for ours_value, official_value, exact in zip(computed[:4], expected[:4], reference, strict=True):
        assert ours_value.dtype == torch.bfloat16
        assert rel_err(official_value, exact) <= bound
        assert rel_err(ours_value, exact) <= bound
    other_rule = "legacy" if uniform_rule == "current" else "current"
    _, other = layer_pair(draw, dtype=torch.bfloat16, layout=LAYOUT, uniform_rule=other_rule)
    assert not torch.equal(run(other, x, grad)[0], computed[0])  # the rule reaches the basis


def test_bfloat16_with_the_cpu_generator():
    official, ours = layer_pair(Draw(), dtype=torch.bfloat16, block_entries=SMALL)
    x, grad = inputs(torch.bfloat16)
    expected, computed = run(official, x, grad), run(ours, x, grad)
    reference = float64_run(official, Draw(), x, grad)
    bound = rounding_bound(torch.bfloat16, K, IN, RANK, OUT) + rounding_bound(torch.float32, IN * OUT)
    for ours_value, official_value, exact in zip(computed[:4], expected[:4], reference, strict=True):
        assert rel_err(official_value, exact) <= bound
        assert rel_err(ours_value, exact) <= bound


def test_construction_draws_and_state_dict_keys_are_the_official_ones(tmp_path):
    for use_nola in (True, False):
        torch.manual_seed(21)
        official = OfficialLoRA(IN, OUT, use_nola=use_nola, num_basis=K, rank=RANK)
        official_next = torch.rand(3)
        torch.manual_seed(21)
        ours = LoRA(IN, OUT, use_nola=use_nola, num_basis=K, rank=RANK)
        assert torch.equal(torch.rand(3), official_next)
        assert list(ours.state_dict()) == list(official.state_dict())
        for key, value in official.state_dict().items():
            assert torch.equal(ours.state_dict()[key], value), key
    assert list(ours.state_dict()) == ["lora_A.weight", "lora_B.weight"]

    official, ours = layer_pair(Draw())
    assert list(ours.state_dict()) == [f"lora_{r}.{f}" for r in "AB" for f in ("weight", "seed", "coefficients")]
    torch.save(ours.state_dict(), tmp_path / "ours.pt")
    fresh = OfficialLoRA(IN, OUT, use_nola=True, num_basis=K, rank=RANK, alpha=ALPHA)
    fresh.load_state_dict(torch.load(tmp_path / "ours.pt", weights_only=True), strict=True)
    for key, value in official.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    torch.manual_seed(4)
    official_linear = OfficialNOLALinear(IN, OUT, num_basis=K, bias=True)
    ours_linear = NOLALinear(IN, OUT, num_basis=K, bias=True)
    assert list(ours_linear.state_dict()) == list(official_linear.state_dict()) == ["weight", "bias", "seed", "coefficients"]
    with torch.no_grad():
        official_linear.coefficients.normal_()
        official_linear.bias.normal_()  # the official forward ignores it
    ours_linear.load_state_dict(official_linear.state_dict(), strict=True)
    assert not ours_linear.weight.requires_grad and ours_linear.coefficients.requires_grad
    x = torch.randn(3, IN)
    assert torch.equal(ours_linear(x), official_linear(x))


def test_the_global_generator_stays_untouched_on_request():
    _, ours = layer_pair(Draw(), layout=LAYOUT, reseed_global_rng=False)
    x, grad = inputs(torch.float32)
    before = torch.get_rng_state()
    ours(x).backward(grad)
    assert torch.equal(torch.get_rng_state(), before)


def test_generate_params_takes_the_official_arguments():
    coefficients = torch.randn(K, requires_grad=True)
    seed = torch.randint(int(1e10), (1,))
    mix = GenerateParams.apply(coefficients, OUT, IN, seed)
    expected = Draw().basis(seed, K, OUT, IN, coefficients)
    assert torch.equal(mix, torch.einsum("b,boi->oi", coefficients, expected))
    grad = torch.randn(OUT, IN)
    mix.backward(grad)
    exact = torch.einsum("boi,oi->b", expected.double(), grad.double())
    assert rel_err(coefficients.grad, exact) <= rounding_bound(torch.float32, OUT * IN)


def refuses(call, error, match):
    """call() raises before it changes anything: the global generator is where it was."""
    before = torch.get_rng_state()
    with pytest.raises(error, match=match):
        call()
    assert torch.equal(torch.get_rng_state(), before)


def test_bad_arguments_are_refused_before_any_change():
    def lora(**kwargs):
        return lambda: LoRA(IN, OUT, use_nola=True, num_basis=K, rank=RANK, **kwargs)

    refuses(lora(layout="H100"), ValueError, r"layout must be a CudaLayout.*got 'H100'")
    refuses(lora(uniform_rule="newest"), ValueError, r"uniform_rule must be one of")
    refuses(lora(layout="generator", uniform_rule="legacy"), ValueError, r"uniform_rule='legacy'.*needs a CudaLayout")
    refuses(lora(block_entries=0), ValueError, r"block_entries must be a positive integer, got 0")
    refuses(lora(reseed_global_rng="yes"), TypeError, r"reseed_global_rng must be True or False")
    refuses(lambda: LoRA(IN, OUT, use_nola=True, num_basis=0), ValueError, r"num_basis must be a positive integer")
    refuses(lambda: LoRA(IN, OUT, rank=0), ValueError, r"rank must be a positive integer, got 0")
    refuses(lambda: NOLALinear(IN, OUT, num_basis=2.5), ValueError, r"num_basis must be a positive integer, got 2\.5")

    _, ours = layer_pair(Draw(), uniform_rule="legacy")  # the CPU's default layout is torch's generator
    x = torch.randn(3, IN)
    refuses(lambda: ours(x), ValueError, r"uniform_rule='legacy'.*needs a CudaLayout")
    _, ours = layer_pair(Draw(), layout=LAYOUT)
    refuses(lambda: ours.double()(x.double()), ValueError, r"coefficients' dtype must be one of.*float64")
    with torch.no_grad():
        ours.float().lora_A.seed.fill_(-1)
    refuses(lambda: ours(x), ValueError, r"seed must be in \[0, 2\^64\), got -1")
    assert ours.lora_A.coefficients.grad is None

    c = torch.randn(K)
    refuses(lambda: GenerateParams.apply(c, OUT, IN, torch.tensor([1.5])), ValueError, r"seed must hold one integer")
    refuses(lambda: GenerateParams.apply(c, OUT, IN, "7"), ValueError, r"seed must be an integer")
    refuses(lambda: GenerateParams.apply(c.view(4, 4), OUT, IN, 7), ValueError, r"coefficients must be a non-empty 1-D")
    refuses(lambda: GenerateParams.apply(c.long(), OUT, IN, 7), ValueError, r"coefficients must be a float tensor")
    refuses(lambda: GenerateParams.apply(c, 0, IN, 7), ValueError, r"out_dim must be a positive integer, got 0")
    refuses(lambda: GenerateParams.apply(c, OUT, IN, 7, "A100"), TypeError, r"generation must be a Generation")
    assert Generation("A100").layout == CudaLayout(108)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_a_gpu_against_torchs_own_generator(dtype):
    """The official layer drawing with torch's CUDA generator; the drop-in emulating this GPU's
    layout (its default on CUDA) a block at a time."""
    official, ours = layer_pair(Draw(), dtype=dtype, block_entries=SMALL)
    official, ours = official.cuda(), ours.cuda()
    x, grad = (t.cuda() for t in inputs(dtype))
    for layer in (ours.lora_A, ours.lora_B):
        shape = (layer.out_features, layer.in_features)
        basis = official_basis_of(layer.coefficients, *shape, layer.seed, layer.generation)
        blocks = torch.cat([block for _, _, block in basis.blocks(x.device)]).to(dtype)
        assert torch.equal(blocks, Draw().basis(layer.seed, K, *shape, layer.coefficients))
    expected, computed = run(official, x, grad), run(ours, x, grad)
    reference = float64_run(official, Draw(), x, grad)
    bound = rounding_bound(dtype, K, IN, RANK, OUT) + rounding_bound(torch.float32, IN * OUT)
    for ours_value, official_value, exact in zip(computed[:4], expected[:4], reference, strict=True):
        assert rel_err(official_value, exact) <= bound
        assert rel_err(ours_value, exact) <= bound
    assert torch.equal(computed[-1], expected[-1])


@pytest.mark.parametrize("layout", ["generator", LAYOUT], ids=["cpu-generator", "gpu-layout"])
def test_the_basis_is_never_held_whole(layout):
    k, shape = 128, (16, 128)  # a 1 MiB float32 basis; blocks of 4096 entries: 0.4 MiB of emulation
    coefficients = torch.randn(k, requires_grad=True)
    grad = torch.randn(shape)
    generation = Generation(layout, reseed_global_rng=False, block_entries=4096)

    def step():
        GenerateParams.apply(coefficients, *shape, 7, generation).backward(grad)

    _, peak_bytes = peak_memory(step, "cpu")
    assert 0 < peak_bytes < k * shape[0] * shape[1] * 4 / 2
