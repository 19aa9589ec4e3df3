"""The settings one named adapter shares across every module it adapts; saved in its checkpoint."""

import dataclasses

from ..validation import (
    check_basis_count,
    check_bool,
    check_distribution,
    check_int,
    check_real,
    check_seed,
    check_target_modules,
)

MODULE_SELECTIONS = ("target_modules", "exclude_modules", "modules_to_save")
# Compared when a checkpoint loads (target_modules only records how inject derived the seeds).
ORDERLESS = ("exclude_modules", "modules_to_save")


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """rank r, num_basis k (for A), num_basis_b l (for B, default k), scaling = lora_alpha / rank
    (lora_alpha defaults to rank, i.e. scaling 1). `seed` is the master seed the per-module seeds
    derive from (None for a layer built with explicit seeds); `target_modules`, `exclude_modules`
    and `modules_to_save` (names only, as PEFT's) are what inject was asked for, kept so that a
    checkpoint can rebuild the adapter on a fresh model.
    Every field is checked here under its own name."""

    rank: int
    num_basis: int
    num_basis_b: int | None = None
    lora_alpha: float | None = None
    dropout: float = 0.0
    distribution: str = "uniform"
    seed: int | None = None
    share_basis: bool = False
    target_modules: str | tuple[str, ...] | None = None
    exclude_modules: str | tuple[str, ...] | None = None
    modules_to_save: tuple[str, ...] | None = None

    def __post_init__(self):
        check_int("rank", self.rank, 1)
        check_basis_count(self.num_basis, "num_basis")
        if self.num_basis_b is not None:
            check_basis_count(self.num_basis_b, "num_basis_b")
        if self.lora_alpha is not None:
            check_real("lora_alpha", self.lora_alpha, finite=True)
        if not 0.0 <= check_real("dropout", self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        check_distribution(self.distribution)
        if self.seed is not None:
            check_seed("seed", self.seed)
        check_bool("share_basis", self.share_basis)
        if self.modules_to_save is not None and not isinstance(self.modules_to_save, list | tuple):
            kind = type(self.modules_to_save).__name__
            raise TypeError(f"modules_to_save must be a list of module names (as PEFT's), got {kind} {self.modules_to_save!r}")
        if self.modules_to_save is not None and not self.modules_to_save:
            raise ValueError("modules_to_save must name at least one module (None: none), got []")
        for field in MODULE_SELECTIONS:
            value = getattr(self, field)
            if value is not None:
                check_target_modules(value, field)
            if isinstance(value, list | tuple):
                # Names in any order select the same modules; PEFT keeps them as a set.
                object.__setattr__(self, field, tuple(sorted(value)) if field in ORDERLESS else tuple(value))

    @property
    def k(self):
        return self.num_basis

    @property
    def l(self):  # noqa: E743 -- the paper's name for B's basis count
        return self.num_basis if self.num_basis_b is None else self.num_basis_b

    @property
    def scaling(self):
        return (self.rank if self.lora_alpha is None else self.lora_alpha) / self.rank

    def to_dict(self):
        fields = dataclasses.asdict(self)
        for field in MODULE_SELECTIONS:
            if isinstance(fields[field], tuple):
                fields[field] = list(fields[field])
        return fields
