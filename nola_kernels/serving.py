"""Many adapters in one batch: inside `row_adapters(model, adapters)` every adapted layer applies
each batch row's own adapter (docs/adapters.md, "Serving").

Rows and inputs. A layer's input x has shape (N, ..., in), its dimension 0 holding
m * len(adapters) entries for some m >= 1, and entry i belongs to row i // m. For 3-D inputs
(batch, tokens, in) with m = 1 that is the batch row; m > 1 covers a batch whose rows were
repeated in place (generate()'s num_beams or num_return_sequences, which repeat_interleave each
row); 2-D inputs (tokens, in) are the rows' tokens flattened row-major (m tokens per row, one
token per row in a decode step). generate() keeps the batch dimension fixed through its
KV-cached decode, so each row keeps its adapter from prefill to the last token.

How it runs. Per layer and forward: the distinct adapters of the batch come from the layer's
factor cache (those missing mixed together, one pass per basis family), stacked; then one
segmented low-rank product groups the entries by adapter: on a GPU the Triton kernel of
nola_kernels.triton_kernels.segmented, elsewhere batched matmuls over the factors gathered per
entry. Rows of no adapter (None, or an adapter this layer lacks) get the base output alone.
Where the coefficients need gradients, the factors are mixed afresh (differentiable) and the
batched matmuls run."""

import contextlib
import dataclasses

import torch
import torch.nn.functional as F

from .adapters.copied import copied_modules
from .adapters.factor_cache import mix_factors, needs_no_gradient
from .adapters.inject import adapted_modules
from .backends import native_backends
from .validation import check_module, check_name


def check_row_adapters(model, adapters):
    """{layer name: layer} of `model`'s adapted layers, once `adapters` passed every check."""
    check_module("model", model)
    if isinstance(adapters, str) or not isinstance(adapters, list | tuple):
        raise TypeError(
            f"adapters must be a list or tuple of adapter names or None, got {type(adapters).__name__}"
        )
    if not adapters:
        raise ValueError("adapters must name an adapter (or None) for each batch row, got an empty sequence")
    layers = adapted_modules(model)
    known = {name for layer in layers.values() for name in layer.adapters}
    for row, name in enumerate(adapters):
        if name is not None:
            check_name(f"adapters[{row}]", name)
            if name not in known:
                raise KeyError(
                    f"adapters[{row}]: the model has no adapter named {name!r} (it has {sorted(known)})"
                )
    for name, layer in layers.items():
        if layer.merged_adapter is not None:
            raise RuntimeError(
                f"{name} has adapter {layer.merged_adapter!r} merged into its weight, which every row "
                "would get: unmerge it before row_adapters"
            )
        if layer.row_selection is not None:
            raise RuntimeError(f"{name} already serves per-row adapters: row_adapters blocks do not nest")
    copied = sorted(copied_modules(model))
    if copied:
        raise ValueError(
            f"the model trains {copied} whole (modules_to_save), which would run the active adapter's "
            "copy for every row: row_adapters serves adapters without such modules"
        )
    return layers


@contextlib.contextmanager
def row_adapters(model, adapters):
    """Inside the block, batch row r of every forward through `model` uses adapter `adapters[r]`
    (a name already on the model, or None for the base alone); see this module's docstring for
    how rows map to inputs. Bad arguments, a merged adapter or a nested block raise before
    anything changes."""
    layers = check_row_adapters(model, adapters)
    for layer in layers.values():
        layer.row_selection = RowSelection(tuple(adapters), layer)
    try:
        yield
    finally:
        for layer in layers.values():
            layer.row_selection = None


@dataclasses.dataclass(frozen=True)
class EntryIndex:
    """How dimension 0 of one input shape maps to a layer's stacked factors: `slots` the factor
    index of each adapted entry, `adapted` those entries (None: all of them), `identity` when
    entry i uses factor i."""

    slots: torch.Tensor
    adapted: torch.Tensor | None
    identity: bool


class RowSelection:
    """One layer's share of a row_adapters block: its distinct adapters in order of first
    appearance, each row's index among them (-1: the base alone), and what forwards reuse."""

    def __init__(self, rows, layer):
        present = [name for name in rows if name is not None and name in layer.adapters]
        self.names = tuple(dict.fromkeys(present))
        self.rows = len(rows)
        self.row_slots = torch.tensor([self.names.index(n) if n in self.names else -1 for n in rows])
        self._indices = {}
        self._token_segments = {}
        self._stacked = None

    def forward(self, layer, x, out):
        if not self.names:
            return out
        lead = x.shape[0] if x.dim() >= 2 else 0
        if lead == 0 or lead % self.rows:
            raise ValueError(
                f"row_adapters gave {self.rows} rows (len(adapters)), but an input of shape {tuple(x.shape)} "
                "reached an adapted layer: its dimension 0 must be a multiple of the rows"
            )
        adapters = [layer.adapters[name] for name in self.names]
        if layer.training and any(adapter.config.dropout for adapter in adapters):
            raise RuntimeError("row_adapters applies no dropout: put the model in eval mode (model.eval())")
        if all(needs_no_gradient(adapter) for adapter in adapters):
            a, b = self._cached_stack(layer, adapters, x.dtype)
            # The kernel writes through raw pointers: only where autograd needs nothing from it.
            if uses_kernel(x) and not (torch.is_grad_enabled() and (x.requires_grad or out.requires_grad)):
                return _kernel_product(x, a, b, self._segments(x), out)
        else:
            a, b = stack_factors(
                [(fa.to(x.dtype), fb.to(x.dtype)) for fa, fb in mix_factors(adapters, layer.backend)]
            )
        return rows_product(x, a, b, self._index(x.device, lead), out)

    def _segments(self, x):
        """The kernel's Segments for an input of x's shape: its tokens grouped by adapter."""
        from .triton_kernels.segmented import Segments  # needs Triton: imported when used

        tokens = x.numel() // x.shape[-1]
        key = (str(x.device), x.shape[0], tokens)
        if key not in self._token_segments:
            token_slots = self.row_slots.repeat_interleave(tokens // self.rows).to(x.device)
            self._token_segments[key] = Segments.of(token_slots, len(self.names))
        return self._token_segments[key]

    def _index(self, device, lead):
        key = (str(device), lead)
        if key not in self._indices:
            entry_slots = self.row_slots.repeat_interleave(lead // self.rows)
            adapted = torch.nonzero(entry_slots >= 0).squeeze(1)
            everyone = len(adapted) == lead
            slots = entry_slots[adapted]
            identity = everyone and torch.equal(slots, torch.arange(len(self.names)))
            self._indices[key] = EntryIndex(
                slots.to(device), None if everyone else adapted.to(device), bool(identity)
            )
        return self._indices[key]

    def _cached_stack(self, layer, adapters, dtype):
        """The stacked factors of the cached entries, stacked again only when an entry changed."""
        entries = layer.factor_cache.factors(self.names, adapters, dtype, layer.backend)
        if self._stacked is None or any(e is not s for e, s in zip(entries, self._stacked[0], strict=True)):
            self._stacked = (entries, *stack_factors([(e.a, e.b) for e in entries]))
        return self._stacked[1:]


def uses_kernel(x):
    """Whether the segmented Triton kernel runs the product: on a GPU where Triton runs natively."""
    return x.is_cuda and "triton" in native_backends(x.device)


def stack_factors(factors):
    """A (adapters, rank, in) and B (adapters, out, rank) from [(A_i, B_i)], smaller ranks padded
    with zero rows of A and zero columns of B (which add nothing)."""
    rank = max(a.shape[0] for a, _ in factors)
    a = torch.stack([F.pad(a, (0, 0, 0, rank - a.shape[0])) for a, _ in factors])
    b = torch.stack([F.pad(b, (0, rank - b.shape[1])) for _, b in factors])
    return a, b


def rows_product(x, a, b, index, out):
    """out + each entry's (x A_s^T) B_s^T by batched matmuls over the factors gathered per entry."""
    lead = x.shape[0]
    x3 = x.reshape(lead, -1, x.shape[-1])
    out3 = out.reshape(lead, -1, out.shape[-1])
    if index.adapted is not None:
        x3 = x3.index_select(0, index.adapted)
    if not index.identity:
        a, b = a.index_select(0, index.slots), b.index_select(0, index.slots)
    h = torch.bmm(x3, a.transpose(1, 2).to(x3.dtype))
    b_t = b.transpose(1, 2).to(h.dtype)
    if index.adapted is None and out3.dtype == h.dtype:
        return torch.baddbmm(out3, h, b_t).view(out.shape)
    delta = torch.bmm(h, b_t).to(out.dtype)
    if index.adapted is None:
        return (out3 + delta).view(out.shape)
    return out3.index_add(0, index.adapted, delta).view(out.shape)


def _kernel_product(x, a, b, segments, out):
    from .triton_kernels.segmented import segmented_delta  # needs Triton: imported when used

    flat = segmented_delta(x.reshape(-1, x.shape[-1]), a, b, segments, out.reshape(-1, out.shape[-1]))
    return flat.view(out.shape)
