"""The low-rank product shared by nola_matmul and the naive baselines, so all compute alike."""


def with_offset(mixed, offset):
    """A factor: the mixed basis plus its optional fixed offset (a0 or b0)."""
    return mixed if offset is None else mixed + offset


def lowrank_delta(x, a, b):
    """(x a^T) b^T with both factors cast to x's dtype: two skinny products, so autograd saves
    only x, the small factors and x a^T."""
    return (x @ a.to(x.dtype).T) @ b.to(x.dtype).T
