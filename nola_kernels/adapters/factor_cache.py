"""The factor cache: where no gradient is needed, an adapted layer mixes its adapters' factors
once and reuses them, so eval forwards and decoded tokens generate no basis entry.

Each NOLALinear keeps a FactorCache: for each adapter name, A = a0 + mix(alpha) (rank, in) and
B = scaling * mix(beta) (out, rank), computed as the composed path computes them (float32, so the
outputs are the composed path's bit for bit) and kept in the compute dtype (x's dtype): the size of
a LoRA adapter's weights. An entry is used only while it still describes the adapter: the same
coefficient tensors (identity, storage and `_version`, which in-place updates such as an
optimizer step or load_adapter's copy bump), device, dtypes and backend, and no inference tensor
outside inference mode. The layer drops its entries on set_active, merge, unmerge and delete.

The cache applies where no gradient reaches the coefficients (grad mode off, inference mode, or
coefficients that do not require grad) and not while torch.compile traces (a compiled model
runs the uncached path, which it can capture). Per layer it holds at most `max_adapters`
entries, least recently used dropped first. `set_factor_cache` turns it off or changes the bound.

a0 is fixed by (seed_a, rank, in_features): `shared_offset` generates it once per device for all
adapters of that family, so that a bank of adapters costs only its coefficients.
"""

import collections
import dataclasses
import math
import typing
import weakref

import torch

from ..api import nola_basis
from ..lowrank import lowrank_delta
from ..validation import check_bool, check_int
from .families import mix_factors


class FactorCacheSettings(typing.NamedTuple):
    enabled: bool
    max_adapters: int


_settings = {"current": FactorCacheSettings(enabled=True, max_adapters=64)}
_caches = weakref.WeakSet()


def factor_cache_settings():
    return _settings["current"]


def set_factor_cache(enabled, max_adapters=None):
    """Turn the factor cache on or off (off drops every cached factor) and, with `max_adapters`,
    bound the adapters cached per layer. Returns the previous FactorCacheSettings, so that
    `set_factor_cache(*previous)` restores them."""
    check_bool("enabled", enabled)
    previous = _settings["current"]
    bound = previous.max_adapters if max_adapters is None else check_int("max_adapters", max_adapters, 1)
    _settings["current"] = FactorCacheSettings(enabled, bound)
    for cache in list(_caches):
        cache.clear() if not enabled else cache.trim()
    return previous


_offsets = weakref.WeakValueDictionary()


def shared_offset(seed_a, rank, in_features, device):
    """a0 of family (seed_a, rank, in_features) on `device`: basis 0 of stream 1 scaled by
    1/sqrt(in) (docs/spec.md), one tensor shared by every adapter that holds it."""
    key = (seed_a, rank, in_features, str(device))
    offset = _offsets.get(key)
    if offset is None:
        offset = nola_basis(seed_a, 1, (rank, in_features), stream=1, device=device)[0] / math.sqrt(
            in_features
        )
        _offsets[key] = offset
    return offset


def needs_no_gradient(adapter):
    """Whether a forward through `adapter` may use cached factors."""
    if not _settings["current"].enabled or torch.compiler.is_compiling():
        return False
    return not torch.is_grad_enabled() or not (adapter.alpha.requires_grad or adapter.beta.requires_grad)


def _tensor_state(tensor):
    return id(tensor), tensor._version, tensor.data_ptr(), tensor.dtype, tensor.device


def _state(adapter, dtype, backend):
    return (*_tensor_state(adapter.alpha), *_tensor_state(adapter.beta), dtype, backend)


@dataclasses.dataclass(frozen=True)
class Factors:
    """One adapter's factors in the compute dtype: a (rank, in) with a0, b (out, rank) with the
    scaling applied, and the state of the adapter they were mixed from."""

    a: torch.Tensor
    b: torch.Tensor
    state: tuple

    def usable(self, state):
        return self.state == state and (torch.is_inference_mode_enabled() or not self.a.is_inference())


class FactorCache:
    """One layer's cached factors, {adapter name: Factors}, least recently used first."""

    def __init__(self):
        self.entries = collections.OrderedDict()
        _caches.add(self)

    def factors(self, names, adapters, dtype, backend):
        """[Factors] of adapters `names` (their modules `adapters`) in `dtype`; the ones missing
        or stale are mixed together and cached."""
        states = [_state(adapter, dtype, backend) for adapter in adapters]
        found = [self.entries.get(name) for name in names]
        stale = [
            i
            for i, (entry, state) in enumerate(zip(found, states, strict=True))
            if entry is None or not entry.usable(state)
        ]
        if stale:
            with torch.no_grad():
                fresh = mix_factors([adapters[i] for i in stale], backend)
            for i, (a, b) in zip(stale, fresh, strict=True):
                found[i] = Factors(a.to(dtype), b.to(dtype), states[i])
        for name, entry in zip(names, found, strict=True):
            self.entries[name] = entry
            self.entries.move_to_end(name)
        self.trim()
        return found

    def trim(self):
        while len(self.entries) > _settings["current"].max_adapters:
            self.entries.popitem(last=False)

    def drop(self, name):
        self.entries.pop(name, None)

    def clear(self):
        self.entries.clear()

    def nbytes(self):
        return sum(e.a.nbytes + e.b.nbytes for e in self.entries.values())

    # A copied layer (copy.deepcopy, pickling) starts with an empty cache of its own.
    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    def __deepcopy__(self, memo):
        return FactorCache()


def cached_delta(layer, name, x, out):
    """out + the update of `layer`'s adapter `name` on x, from its cached factors."""
    adapter = layer.adapters[name]
    (factors,) = layer.factor_cache.factors([name], [adapter], x.dtype, layer.backend)
    return lowrank_delta(adapter.dropout(x), factors.a, factors.b, add_to=out)
