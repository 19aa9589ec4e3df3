"""NOLALinear: a frozen base layer plus named NOLA adapters, one of them active.

output = base(x) + scaling * (dropout(x) A^T) B^T with A = a0 + mix(alpha), B = mix(beta):
alpha and beta start at zero, a0 is generated from seed_a (stream 1, scale 1/sqrt(in), as
docs/spec.md says) and b0 = 0, so the update starts at zero and beta gets gradient first.
"""

import torch
from torch import nn

from ..api import nola_matmul, nola_mix
from ..backends import resolve_backend
from ..lowrank import lowrank_delta
from ..validation import check_backend_name, check_module, check_name, check_seed, check_shape
from .base_layer import add_to_weight, features, mergeable_weight
from .config import AdapterConfig
from .factor_cache import FactorCache, cached_delta, needs_no_gradient, shared_offset
from .families import mixing_coeffs


def check_factor_shapes(config, in_features, out_features, where):
    """A (rank, in) and B (out, rank) within the basis contract's limits, checked before any
    layer is built (a0 alone is rank * in floats)."""
    check_shape(f"(rank, in_features) of {where}", (config.rank, in_features))
    check_shape(f"(out_features, rank) of {where}", (out_features, config.rank))


def check_foldable(name, layer):
    """What merging into or unmerging from `layer` would refuse (a base weight that cannot take a
    dense update, a backend that cannot run beside it, a row_adapters block that would apply the
    folded update again), raised now with the layer's name."""
    if layer.row_selection is not None:
        raise RuntimeError(f"{name}: inside a row_adapters block; leave it before merging or unmerging")
    try:
        resolve_backend(layer.backend, mergeable_weight(layer.base_layer).device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise type(error)(f"{name}: {error}") from error


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
        self._refresh_offset()

    def offset(self, device):
        """a0 on `device`, float32 whatever dtype the model is cast to: the contract's a0 exactly.
        Generated once per device and family (not a buffer, which a cast to half precision would
        round)."""
        if self._a0 is None or self._a0.device != device:
            self._a0 = shared_offset(self.seed_a, self.config.rank, self.in_features, device)
        return self._a0

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._refresh_offset()
        return self

    def _refresh_offset(self):
        # a0 follows the coefficients' device from the start, so that a forward (a compiled one
        # too) only reads it and never changes the module. Nothing to generate on "meta".
        if self.alpha.device.type != "meta":
            self.offset(self.alpha.device)

    def delta(self, x, backend, add_to=None):
        return nola_matmul(
            self.dropout(x),
            mixing_coeffs(self.alpha),
            mixing_coeffs(self.beta),
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
                mixing_coeffs(self.alpha).float(), self.seed_a, (self.config.rank, self.in_features), **mix
            )
            b = nola_mix(
                mixing_coeffs(self.beta).float(), self.seed_b, (self.out_features, self.config.rank), **mix
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
    the seeds). add_adapter adds more; set_active picks the one in use (None: the base alone).
    Inside nola_kernels.row_adapters, `row_selection` gives each batch row its own adapter."""

    row_selection = None

    grouped = None  # this layer's factors from its model's grouped pass (adapters/grouping.py)

    def __init__(self, base, *, seed_a, seed_b, adapter_name="default", backend="auto", **options):
        check_module("base", base)
        in_features, out_features = features(base, "base")
        check_backend_name(backend)
        config = AdapterConfig(**options)
        self._check_new_adapter(adapter_name, config, seed_a, seed_b, (in_features, out_features))
        super().__init__()
        self.base_layer = base
        self.in_features, self.out_features = in_features, out_features
        self.adapters = nn.ModuleDict()
        self.backend = backend
        self.active_adapter = None
        self.merged_adapter = None
        self.factor_cache = FactorCache()
        # The new layer takes the mode of the module it wraps (eval stays eval: no dropout).
        self.training = self.adapters.training = base.training
        self.add_adapter(adapter_name, config, seed_a, seed_b)

    def check_adapter(self, name, config, seed_a, seed_b):
        """What add_adapter refuses, raised without changing anything."""
        self._check_new_adapter(name, config, seed_a, seed_b, (self.in_features, self.out_features))
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        if self.merged_adapter is not None:
            raise RuntimeError(
                f"adapter {self.merged_adapter!r} is merged: unmerge it before adding adapter {name!r}"
            )

    @staticmethod
    def _check_new_adapter(name, config, seed_a, seed_b, sizes):
        check_name("adapter_name", name)
        if not isinstance(config, AdapterConfig):
            raise TypeError(f"config must be an AdapterConfig, got {type(config).__name__}")
        check_seed("seed_a", seed_a)
        check_seed("seed_b", seed_b)
        check_factor_shapes(config, *sizes, "the layer")

    def add_adapter(self, name, config, seed_a, seed_b):
        """Add adapter `name` (in this layer's training mode) and make it the active one."""
        self.check_adapter(name, config, seed_a, seed_b)
        adapter = NOLAAdapter(self.in_features, self.out_features, config, seed_a, seed_b)
        weight = getattr(self.base_layer, "weight", None)
        # The coefficients live beside the base weight; made on "meta" (PEFT's low_cpu_mem_usage),
        # they stay there until a state dict is assigned to them.
        if isinstance(weight, torch.Tensor) and adapter.alpha.device.type != "meta":
            adapter.to(weight.device)
        adapter.train(self.training)
        self.adapters[name] = adapter
        self.set_active(name)

    def set_active(self, name):
        if name is not None and name not in self.adapters:
            raise KeyError(f"no adapter {name!r} on this layer (it has {list(self.adapters)})")
        if self.merged_adapter is not None and name != self.merged_adapter:
            raise RuntimeError(f"adapter {self.merged_adapter!r} is merged: unmerge it before switching")
        self.active_adapter = name
        self.factor_cache.clear()

    def delete_adapter(self, name):
        if name == self.merged_adapter:
            self.unmerge()
        if self.grouped is not None and self.grouped.adapter is self.adapters[name]:
            self.grouped = None  # the factors of a grouped pass, which no forward can use now
        del self.adapters[name]
        self.factor_cache.drop(name)
        if self.active_adapter == name:
            self.active_adapter = None

    def forward(self, x):
        out = self.base_layer(x)
        if self.row_selection is not None:
            return self.row_selection.forward(self, x, out)
        if self.active_adapter is None or self.merged_adapter is not None:
            return out
        adapter = self.adapters[self.active_adapter]
        if self.grouped is not None and self.grouped.usable(adapter):
            return lowrank_delta(adapter.dropout(x), self.grouped.a, self.grouped.b, add_to=out)
        if needs_no_gradient(adapter):
            return cached_delta(self, self.active_adapter, x, out)
        return adapter.delta(x, self.backend, add_to=out)

    def train(self, mode=True):
        # A write through .data (or numpy) leaves the version counters as they were, which the
        # cache cannot see: every switch between training and evaluation starts it afresh.
        self.factor_cache.clear()
        return super().train(mode)

    def merge(self):
        """Fold the active adapter's scaling * B A into the base weight (forward then skips it)."""
        if self.merged_adapter is not None:
            raise RuntimeError(f"adapter {self.merged_adapter!r} is already merged")
        if self.active_adapter is None:
            raise RuntimeError("no active adapter to merge")
        check_foldable("the layer", self)
        add_to_weight(self.base_layer, self.adapters[self.active_adapter].dense_delta(self.backend))
        self.merged_adapter = self.active_adapter
        self.factor_cache.clear()

    def unmerge(self):
        """Subtract the merged update again: the weight comes back up to float rounding."""
        if self.merged_adapter is None:
            raise RuntimeError("no adapter is merged")
        check_foldable("the layer", self)
        add_to_weight(self.base_layer, -self.adapters[self.merged_adapter].dense_delta(self.backend))
        self.merged_adapter = None
        self.factor_cache.clear()

    def extra_repr(self):
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"active={self.active_adapter!r}, merged={self.merged_adapter!r}"
        )


def adapted_modules(model):
    """{name: NOLALinear} of every adapted layer in `model`, in module order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, NOLALinear)}
