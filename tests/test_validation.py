"""Every bad input raises a clear TypeError/ValueError naming the argument, before any work."""

import math
import os
import subprocess
import sys

import pytest
import torch

import nola_kernels
from nola_kernels import BackendUnavailableError, nola_basis, nola_matmul, nola_mix, nola_project
from nola_kernels.validation import check_shape


def _good():
    tensors = dict(x=torch.randn(4, 6), alpha=torch.randn(5), beta=torch.randn(7),
                   a0=torch.randn(3, 6), b0=torch.randn(8, 3))  # fmt: skip
    kwargs = dict(seed_a=1, seed_b=2, rank=3, out_features=8)
    return tensors, kwargs


def test_good_arguments_pass():
    tensors, kwargs = _good()
    assert nola_matmul(**tensors, **kwargs).shape == (4, 8)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(x=torch.randint(0, 5, (4, 6))), TypeError, "x must have dtype"),
        (dict(x=[[1.0] * 6]), TypeError, "x must be a torch.Tensor"),
        (dict(x=torch.randn(4, 5)), ValueError, "in_features = 6"),
        (dict(x=torch.tensor(1.0)), ValueError, r"x must have shape \(..., in_features\)"),
        (dict(x=torch.randn(4, 0), a0=None), ValueError, "in_features >= 1"),
        (dict(alpha=torch.randn(5, 1)), ValueError, "alpha must be 1-D"),
        (dict(beta=torch.randn(0)), ValueError, "beta must not be empty"),
        (dict(alpha=torch.randn(5).bfloat16()), TypeError, "alpha must have dtype float32, float64"),
        (dict(beta=torch.arange(7)), TypeError, "beta must have dtype"),
        (dict(a0=torch.randn(4, 6)), ValueError, r"a0 must have shape \(3, 6\)"),
        (dict(b0=torch.randn(3, 8)), ValueError, r"b0 must have shape \(8, 3\)"),
        (dict(a0=torch.randn(3, 6, dtype=torch.complex64)), TypeError, "a0 must have dtype"),
        (dict(alpha=torch.randn(5, device="meta")), ValueError, "one device.*alpha on meta"),
        (dict(b0=torch.randn(8, 3, device="meta")), ValueError, "one device.*b0 on meta"),
        (dict(rank=0), ValueError, "rank must be an int >= 1, got 0"),
        (dict(rank=2.0), TypeError, "rank must be an int"),
        (dict(out_features=-1), ValueError, "out_features must be an int"),
        (dict(seed_a=-1), ValueError, r"seed_a must be an int in \[0, 9223372036854775808\)"),
        (dict(seed_b=2**63), ValueError, "seed_b must be an int in"),
        (dict(seed_a=1.5), TypeError, "seed_a must be an int"),
        (dict(seed_b=True), TypeError, "seed_b must be an int, got bool"),
        (dict(scaling="2"), TypeError, "scaling must be a real number"),
        (dict(distribution="normal"), ValueError, "distribution must be one of"),
        (dict(backend="tpu"), ValueError, "backend must be 'auto' or one of"),
    ],
)
def test_nola_matmul_rejects(change, error, match):
    tensors, kwargs = _good()
    arguments = {**tensors, **kwargs}
    arguments.update(change)
    with pytest.raises(error, match=match):
        nola_matmul(**arguments)


@pytest.mark.skipif("cuda" in nola_kernels.available_backends("cpu"), reason="the CUDA backend runs here")
def test_unavailable_backend_says_why():
    tensors, kwargs = _good()
    with pytest.raises(BackendUnavailableError, match=r"backend 'cuda' cannot run on cpu: .+"):
        nola_matmul(**tensors, **kwargs, backend="cuda")


def test_triton_on_cpu_without_the_interpreter_says_how():
    probe = (
        "import torch, nola_kernels\n"
        "try:\n"
        "    nola_kernels.nola_mix(torch.randn(3), 1, (2, 2), backend='triton')\n"
        "except nola_kernels.BackendUnavailableError as error:\n"
        "    print(error)\n"
    )
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert "backend 'triton' cannot run on cpu" in result.stdout
    assert "set TRITON_INTERPRET=1" in result.stdout


def test_huge_factor_is_rejected_before_any_allocation():
    x = torch.randn(2, 2**20)
    with pytest.raises(ValueError, match="at most 2\\*\\*34 entries"):
        nola_matmul(x, torch.randn(3), torch.randn(3), seed_a=0, seed_b=0, rank=2**15, out_features=4)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((-1, 2, (3, 3)), {}, ValueError, "seed must be"),
        ((1, 0, (3, 3)), {}, ValueError, "k must be an int in"),
        ((1, 2**32 + 1, (3, 3)), {}, ValueError, "k must be an int in"),
        ((1, 2, (0, 3)), {}, ValueError, r"shape\[0\] must be an int"),
        ((1, 2, (3,)), {}, ValueError, r"shape must be a pair"),
        ((1, 2, (2**17, 2**18)), {}, ValueError, r"at most 2\*\*34 entries"),
        ((1, 2, (3, 3)), dict(stream=-5), ValueError, "stream must be an int in"),
        ((1, 2, (3, 3)), dict(stream=2**63), ValueError, "stream must be an int in"),
        ((1, 2, (3, 3)), dict(distribution="gauss"), ValueError, "distribution must be one of"),
    ],
)
def test_nola_basis_rejects(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        nola_basis(*args, **kwargs)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: nola_mix(torch.randn(3), 1, (2, 2), stream=-1), ValueError, "stream must be an int in"),
        (lambda: nola_project(torch.randn(2, 2), 1, 3, stream=2**63), ValueError, "stream must be an int in"),
        (
            lambda: nola_mix(torch.randn(3), 1, (2, 2), distribution="gauss"),
            ValueError,
            "distribution must be",
        ),
        (lambda: nola_project(torch.randn(2, 2), 1, 3, backend="tpu"), ValueError, "backend must be 'auto'"),
        (
            lambda: nola_mix(torch.randn(3), 1, (2, 2), backend="cuda"),
            BackendUnavailableError,
            "backend 'cuda' cannot run on cpu",
        ),
        (lambda: nola_basis(1, 2, (3, 3), device="nowhere"), ValueError, "device must be a torch.device"),
    ],
)
def test_family_and_backend_arguments_rejected_everywhere(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_largest_basis_matrix_is_accepted():
    assert check_shape("shape", (2**17, 2**17)) == (2**17, 2**17)
    with pytest.raises(ValueError, match=r"at most 2\*\*34 entries"):
        check_shape("shape", (2**17 + 1, 2**17))


def test_nola_mix_and_project_reject():
    with pytest.raises(ValueError, match="coeffs must not be empty"):
        nola_mix(torch.randn(0), 1, (2, 2))
    with pytest.raises(TypeError, match="coeffs must have dtype"):
        nola_mix(torch.randn(3).half(), 1, (2, 2))
    with pytest.raises(TypeError, match="scale must be a real number"):
        nola_mix(torch.randn(3), 1, (2, 2), scale="big")
    with pytest.raises(ValueError, match="seed must be"):
        nola_mix(torch.randn(3), 2**64, (2, 2))
    with pytest.raises(ValueError, match="grad must be 2-D"):
        nola_project(torch.randn(4), 1, 3)
    with pytest.raises(ValueError, match="k must be an int in"):
        nola_project(torch.randn(2, 2), 1, 0)
    with pytest.raises(TypeError, match="grad must have dtype"):
        nola_project(torch.ones(2, 2, dtype=torch.int32), 1, 3)


@pytest.mark.parametrize("nbytes", [0, -5, 1.5, True])
def test_chunk_budget_rejects_non_positive_ints(nbytes):
    with pytest.raises(ValueError, match="chunk budget"):
        nola_kernels.set_chunk_budget(nbytes)


def test_chunk_budget_defaults_per_device(set_budget):
    set_budget(None)
    assert nola_kernels.chunk_budget("cpu") == 2 << 20
    assert nola_kernels.chunk_budget("cuda") == 64 << 20
    set_budget(12345)
    assert nola_kernels.chunk_budget("cpu") == nola_kernels.chunk_budget("cuda") == 12345


def test_chunk_budget_from_environment():
    probe = "import nola_kernels; print(nola_kernels.chunk_budget('cpu'), nola_kernels.chunk_budget('cuda'))"
    for value, accepted in [("12345", True), ("abc", False), ("0", False)]:
        env = {**os.environ, "NOLA_CHUNK_BYTES": value}
        result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
        if accepted:
            assert result.returncode == 0 and result.stdout.split() == [value, value], result.stderr
        else:
            assert result.returncode != 0
            assert f"NOLA_CHUNK_BYTES must be a positive int of bytes, got '{value}'" in result.stderr


@pytest.mark.parametrize("value", [10**400, -(10**400), 10**5000], ids=["1e400", "-1e400", "1e5000"])
def test_numbers_beyond_float_range_are_value_errors(value):
    from nola_kernels.validation import check_real

    with pytest.raises(ValueError, match="scale is out of float range"):
        check_real("scale", value)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_numbers_pass_unless_finite_is_asked(value):
    from nola_kernels.validation import check_real

    assert math.isnan(check_real("scale", value)) or math.isinf(check_real("scale", value))
    with pytest.raises(ValueError, match="lora_alpha must be finite"):
        check_real("lora_alpha", value, finite=True)


def test_a_huge_int_is_described_not_printed():
    # str() of an int of more than 4300 digits raises in Python >= 3.11; the message must not.
    from nola_kernels.validation import check_int

    with pytest.raises(ValueError, match="rank must be an int in \\[1, 5\\), got an int of 16610 bits"):
        check_int("rank", 10**5000, 1, 5)
