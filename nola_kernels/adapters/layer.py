"""NOLALinear: a frozen base layer plus named NOLA adapters, one of them active.

output = base(x) + scaling * (dropout(x) A^T) B^T with A = a0 + mix(alpha), B = mix(beta):
alpha and beta start at zero, a0 is generated from seed_a (stream 1, scale 1/sqrt(in), as
docs/spec.md says) and b0 = 0, so the update starts at zero and beta gets gradient first.
"""

import math

import torch
from torch import nn

from ..api import nola_basis, nola_matmul, nola_mix
from ..dtypes import COEFF_DTYPES
from .base_layer import add_to_weight, features
from .config import AdapterConfig


def generated_offset(seed_a, rank, in_features, device=None):
    """a0: basis 0 of stream 1 scaled by 1/sqrt(in), uniform(-1/sqrt(in), 1/sqrt(in))."""
    return nola_basis(seed_a, 1, (rank, in_features), stream=1, device=device)[0] / math.sqrt(in_features)


def _as_coeffs(parameter):
    # A model cast to half precision casts the coefficients too; mixing wants float32 at least.
    return parameter if parameter.dtype in COEFF_DTYPES else parameter.float()


class NOLAAdapter(nn.Module):
    """One adapter of one layer: coefficients alpha (k) and beta (l), the seeds naming its bases,
    and a0 (regenerated from seed_a, never saved)."""

    _a0 = None

    def __init__(self, in_features, out_features, config, seed_a, seed_b):
        super().__init__()
        self.config, self.seed_a, self.seed_b = config, seed_a, seed_b
        self.in_features, self.out_features = in_features, out_features
        self.alpha = nn.Parameter(torch.zeros(config.k))
        self.beta = nn.Parameter(torch.zeros(config.l))
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()

    def offset(self, device):
        """a0 on `device`, float32 whatever dtype the model is cast to: the contract's a0 exactly.
        Generated once per device (not a buffer, which a cast to half precision would round)."""
        if self._a0 is None or self._a0.device != device:
            self._a0 = generated_offset(self.seed_a, self.config.rank, self.in_features, device)
        return self._a0

    def delta(self, x, backend, add_to=None):
        return nola_matmul(
            self.dropout(x),
            _as_coeffs(self.alpha),
            _as_coeffs(self.beta),
            seed_a=self.seed_a,
            seed_b=self.seed_b,
            rank=self.config.rank,
            out_features=self.out_features,
            scaling=self.config.scaling,
            a0=self.offset(x.device),
            distribution=self.config.distribution,
            backend=backend,
            add_to=add_to,
        )

    def factors(self, backend="auto"):
        """The mixed LoRA factors (A (rank, in), B (out, rank)) in float32, scaling not applied."""
        with torch.no_grad():
            mix = dict(distribution=self.config.distribution, backend=backend)
            a = self.offset(self.alpha.device) + nola_mix(
                _as_coeffs(self.alpha).float(), self.seed_a, (self.config.rank, self.in_features), **mix
            )
            b = nola_mix(
                _as_coeffs(self.beta).float(), self.seed_b, (self.out_features, self.config.rank), **mix
            )
        return a, b

    def dense_delta(self, backend="auto"):
        """scaling * B A, the (out, in) float32 update this adapter adds to the base weight."""
        a, b = self.factors(backend)
        return (b @ a).mul_(self.config.scaling)

    def extra_repr(self):
        c = self.config
        return f"rank={c.rank}, k={c.k}, l={c.l}, scaling={c.scaling:g}, distribution={c.distribution!r}"


class NOLALinear(nn.Module):
    """Wraps `base` (nn.Linear, transformers' Conv1D, or any module with in_features and
    out_features, such as bitsandbytes' Linear4bit) and adds the active adapter's update.

    NOLALinear(base, rank=8, num_basis=256, seed_a=1, seed_b=2) holds one adapter named
    "default"; `options` are AdapterConfig's fields (rank, num_basis, num_basis_b, lora_alpha,
    dropout, distribution; seed, share_basis and target_modules only record how inject derived
    the seeds). add_adapter adds more; set_active picks the one in use (None: the base alone)."""

    def __init__(self, base, *, seed_a, seed_b, adapter_name="default", backend="auto", **options):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = features(base)
        self.adapters = nn.ModuleDict()
        self.backend = backend
        self.active_adapter = None
        self.merged_adapter = None
        self.add_adapter(adapter_name, AdapterConfig(**options), seed_a, seed_b)

    def add_adapter(self, name, config, seed_a, seed_b):
        """Add adapter `name` and make it the active one."""
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        adapter = NOLAAdapter(self.in_features, self.out_features, config, seed_a, seed_b)
        weight = getattr(self.base, "weight", None)
        if isinstance(weight, torch.Tensor):
            adapter.to(weight.device)  # the coefficients live beside the base weight
        self.adapters[name] = adapter
        self.set_active(name)

    def set_active(self, name):
        if name is not None and name not in self.adapters:
            raise KeyError(f"no adapter {name!r} on this layer (it has {list(self.adapters)})")
        if self.merged_adapter is not None and name != self.merged_adapter:
            raise RuntimeError(f"adapter {self.merged_adapter!r} is merged: unmerge it before switching")
        self.active_adapter = name

    def delete_adapter(self, name):
        if name == self.merged_adapter:
            self.unmerge()
        del self.adapters[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def forward(self, x):
        out = self.base(x)
        if self.active_adapter is None or self.merged_adapter is not None:
            return out
        return self.adapters[self.active_adapter].delta(x, self.backend, add_to=out)

    def merge(self):
        """Fold the active adapter's scaling * B A into the base weight (forward then skips it)."""
        if self.merged_adapter is not None:
            raise RuntimeError(f"adapter {self.merged_adapter!r} is already merged")
        if self.active_adapter is None:
            raise RuntimeError("no active adapter to merge")
        add_to_weight(self.base, self.adapters[self.active_adapter].dense_delta(self.backend))
        self.merged_adapter = self.active_adapter

    def unmerge(self):
        """Subtract the merged update again: the weight comes back up to float rounding."""
        if self.merged_adapter is None:
            raise RuntimeError("no adapter is merged")
        add_to_weight(self.base, -self.adapters[self.merged_adapter].dense_delta(self.backend))
        self.merged_adapter = None

    def extra_repr(self):
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"active={self.active_adapter!r}, merged={self.merged_adapter!r}"
        )
