"""What an adapter needs to know about the layer it wraps: its feature sizes, and how to fold a
dense update into its weight (nn.Linear keeps (out, in); GPT-2's Conv1D keeps (in, out))."""

import torch

from ..validation import check_int

FEATURE_NAMES = ("in_features", "out_features")


class NotMergeableError(TypeError):
    """The base layer's weight cannot take a dense update (quantized or not a plain tensor)."""


def is_transposed(base):
    """True for transformers' Conv1D (weight (in, out), sizes in nx/nf)."""
    return hasattr(base, "nx") and hasattr(base, "nf") and not hasattr(base, "in_features")


def features(base, name="the module"):
    """(in_features, out_features) of a layer mapping in -> out, both ints >= 1."""
    if is_transposed(base):
        sizes = base.nx, base.nf
    elif hasattr(base, "in_features") and hasattr(base, "out_features"):
        sizes = base.in_features, base.out_features
    else:
        raise TypeError(
            f"cannot adapt {name} ({type(base).__name__}): it needs in_features/out_features "
            "(as nn.Linear) or nx/nf (as transformers' Conv1D)"
        )
    return tuple(check_int(f"{role} of {name}", size, 1) for role, size in zip(FEATURE_NAMES, sizes, strict=True))


def mergeable_weight(base):
    """The base's weight as a floating tensor of the expected layout, or NotMergeableError."""
    weight = getattr(base, "weight", None)
    in_features, out_features = features(base)
    shape = (in_features, out_features) if is_transposed(base) else (out_features, in_features)
    if (
        type(weight) not in (torch.Tensor, torch.nn.Parameter)
        or not weight.is_floating_point()
        or tuple(weight.shape) != shape
    ):
        kind = type(weight).__name__ if weight is None else f"{type(weight).__name__} {weight.dtype}"
        raise NotMergeableError(
            f"cannot merge into {type(base).__name__} with weight {kind}: merging needs a plain "
            f"floating weight of shape {shape} (quantized bases cannot take a dense update)"
        )
    return weight


def add_to_weight(base, delta):
    """weight += delta (delta in (out, in) layout), summed in float32 at least and rounded once to
    the weight's dtype."""
    weight = mergeable_weight(base)
    if is_transposed(base):
        delta = delta.T
    dtype = torch.promote_types(weight.dtype, torch.float32)
    with torch.no_grad():
        weight.copy_((weight.to(dtype) + delta.to(weight.device, dtype)).to(weight.dtype))
