"""NOLA as a PEFT method: `import nola_kernels.peft`, then

    from peft import get_peft_model
    from nola_kernels.peft import NolaConfig
    model = get_peft_model(model, NolaConfig(r=8, num_basis=256, seed=0, target_modules=["q_proj"]))

NolaConfig, the tuner NolaModel (PEFT's BaseTuner) and the tuner layer NolaLayer (NOLALinear with
PEFT's BaseTunerLayer interface): the layers, seeds and numerics are inject's, so that a model
from get_peft_model computes bit for bit what inject makes of it.

Registration: PEFT's PeftType is a closed enum and register_peft_method refuses a name it does
not list, so this module writes NOLA's entries into the three mappings register_peft_method
itself fills (config, tuner and prefix by PEFT type), keyed by NOLA_PEFT_TYPE, a str "NOLA" with
the enum members' .name and .value (PeftType members are strs, so the mappings and the
"peft_type" of adapter_config.json take it). The mappings are module-level state of the PEFT
release this was tested on: any other release is refused on import."""

import dataclasses
import typing
import warnings
from pathlib import Path

import peft
import torch
from peft.config import PeftConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.tuners_utils import (
    BaseTuner,
    BaseTunerLayer,
    _ExcludedModule,
    _maybe_include_all_linear_layers,
)

from .adapters.atomic import atomic_write_bytes
from .adapters.base_layer import is_transposed
from .adapters.checkpoint_file import ROLES
from .adapters.config import AdapterConfig
from .adapters.copied import copy_state
from .adapters.grouping import ungroup
from .adapters.inject import plan_placement
from .adapters.layer import NOLALinear, check_foldable
from .adapters.peft_export import PEFT_PREFIX, check_export_directory
from .spec_version import spec_version_for, spec_version_problem
from .validation import check_backend_name, check_bool, check_distribution, check_int

TESTED_PEFT_VERSIONS = ("0.21.2",)


def check_peft_version(version):
    """The registration reaches into PEFT's mappings: refuse a release it was not tested on."""
    if version not in TESTED_PEFT_VERSIONS:
        raise ImportError(
            f"nola_kernels.peft was tested with peft {', '.join(TESTED_PEFT_VERSIONS)}, this is peft "
            f"{version}: install peft=={TESTED_PEFT_VERSIONS[-1]} (nola_kernels.inject works without PEFT)"
        )


check_peft_version(peft.__version__)


class PeftTypeName(str):
    """A PEFT type outside the PeftType enum: equal to (and hashed as) its name, as members are."""

    @property
    def name(self):
        return str(self)

    @property
    def value(self):
        return str(self)


NOLA_PEFT_TYPE = PeftTypeName("NOLA")


@dataclasses.dataclass
class NolaConfig(PeftConfig):
    """NOLA's PEFT config. r, num_basis, num_basis_b, lora_alpha, dropout, distribution, seed and
    share_basis mean what they mean for nola_kernels.inject (docs/adapters.md): each module's
    seeds derive from `seed` and its name. target_modules, exclude_modules, layers_to_transform,
    layers_pattern and modules_to_save are PEFT's (LoraConfig's). The layout of GPT-2's Conv1D is
    read from the layer, so fan_in_fan_out need not be set; True on a layer that keeps its weight
    (out, in) is refused. spec_version is the basis contract the adapter was trained under: the
    version its distribution needs (docs/spec.md, "Versioning"), derived from the distribution on
    every read, so that it follows a later change of the distribution; a version given (to the
    constructor or assigned) is checked, and one that does not define the distribution is
    refused."""

    r: int = 8
    num_basis: int = 256
    num_basis_b: int | None = None
    lora_alpha: float | None = None
    dropout: float = 0.0
    distribution: str = "uniform"
    seed: int = 0
    share_basis: bool = False
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    target_parameters: list[str] | None = None
    fan_in_fan_out: bool = False
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    modules_to_save: list[str] | None = None
    backend: str = "auto"
    bias: str = "none"
    spec_version: str | None = None

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = NOLA_PEFT_TYPE
        check_int("r", self.r, 1)
        self.adapter_config()  # every setting checked under its own name
        check_bool("fan_in_fan_out", self.fan_in_fan_out)
        check_backend_name(self.backend)
        if self.target_parameters is not None:
            raise ValueError("target_parameters is not supported by NOLA: adapt modules with target_modules")
        if self.bias != "none":
            raise ValueError(f"bias must be 'none' (NOLA trains no biases), got {self.bias!r}")
        if isinstance(self.target_modules, list | tuple | set):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list | tuple | set):
            self.exclude_modules = set(self.exclude_modules)

    def adapter_config(self):
        """The layers' AdapterConfig (the same one inject builds from these settings)."""
        return AdapterConfig(**{ours: _to_adapter(getattr(self, theirs)) for theirs, ours in CONFIG_FIELD_PAIRS})


def _recorded_spec_version(config):
    return spec_version_for(config.distribution)


def _check_spec_version(config, version):
    # Nothing is stored: the distribution alone says which version the config records.
    if version is not None:
        problem = spec_version_problem(version, check_distribution(config.distribution))
        if problem is not None:
            raise ValueError(problem)


# A property over the dataclass field: the constructor (from_pretrained's too) and asdict (what
# save_pretrained writes) go through it, so a saved config records the version of its distribution.
NolaConfig.spec_version = property(
    _recorded_spec_version, _check_spec_version, doc="The basis contract version the distribution needs."
)


# (NolaConfig field, AdapterConfig field): the one table both conversions read.
CONFIG_FIELD_PAIRS = (
    ("r", "rank"),
    ("num_basis", "num_basis"),
    ("num_basis_b", "num_basis_b"),
    ("lora_alpha", "lora_alpha"),
    ("dropout", "dropout"),
    ("distribution", "distribution"),
    ("seed", "seed"),
    ("share_basis", "share_basis"),
    ("target_modules", "target_modules"),
    ("exclude_modules", "exclude_modules"),
    ("modules_to_save", "modules_to_save"),
)


def _to_adapter(value):
    # PEFT keeps module names as sets or lists; AdapterConfig as sorted tuples (hashable, stable).
    return tuple(sorted(value)) if isinstance(value, set | list | tuple) else value


def _to_peft(value):
    return list(value) if isinstance(value, tuple) else value


class NolaLayer(NOLALinear, BaseTunerLayer):
    """NOLALinear with PEFT's layer interface: set_adapter, enable_adapters (disable_adapter()),
    merge(adapter_names=...), unmerge and delete_adapter as PEFT's tuners do them. One adapter is
    active at a time."""

    adapter_layer_names = ("adapters",)

    # NOLALinear keeps the active adapter's name (None: the base alone) in PEFT's own slot.
    @property
    def active_adapter(self):
        return self._active_adapter

    @active_adapter.setter
    def active_adapter(self, name):
        self._active_adapter = name

    @property
    def active_adapters(self):
        return [] if self.active_adapter is None else [self.active_adapter]

    @property
    def merged_adapters(self):
        return [] if self.merged_adapter is None else [self.merged_adapter]

    def set_adapter(self, adapter_names, inference_mode=False):
        name = _single_adapter(adapter_names)
        self.set_active(name if name in self.adapters else None)
        for key, adapter in self.adapters.items():
            adapter.requires_grad_(key == self.active_adapter and not inference_mode)

    def forward(self, x):
        if self.disable_adapters:
            if self.merged_adapter is not None:
                self.unmerge()
            return self.base_layer(x)
        return super().forward(x)

    def merge(self, safe_merge=False, adapter_names=None):
        name = self.adapter_to_merge(safe_merge, adapter_names)
        if name is not None:
            self.set_active(name)
            super().merge()

    def adapter_to_merge(self, safe_merge=False, adapter_names=None, where="the layer"):
        """The adapter merge(safe_merge, adapter_names) folds in (None: nothing to merge), with
        everything merge would refuse raised now and nothing changed; `where` names the layer."""
        name = _single_adapter(self.active_adapters if adapter_names is None else adapter_names)
        if name is None or name == self.merged_adapter or name not in self.adapters:
            return None
        if self.merged_adapter is not None:
            raise RuntimeError(
                f"{where}: adapter {self.merged_adapter!r} is merged: unmerge it before merging {name!r}"
            )
        if safe_merge:
            adapter = self.adapters[name]
            if not (torch.isfinite(adapter.alpha).all() and torch.isfinite(adapter.beta).all()):
                raise ValueError(f"{where}: adapter {name!r} has non-finite coefficients: refusing to merge it")
        check_foldable(where, self)
        return name

    def unmerge(self):
        if self.merged_adapter is None:
            warnings.warn("no NOLA adapter is merged into this layer: nothing to unmerge", stacklevel=2)
            return
        super().unmerge()

    def delete_adapter(self, adapter_name):
        super().delete_adapter(adapter_name)
        if self.active_adapter is None and self.adapters:
            self.set_adapter(sorted(self.adapters)[0])


def _single_adapter(adapter_names):
    names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
    if len(names) > 1:
        raise ValueError(f"a NOLA layer runs one adapter at a time, got adapter_names={names!r}")
    return names[0] if names else None


class NolaModel(BaseTuner):
    """PEFT's tuner for NolaConfig. Before any layer is replaced, every target is checked (its
    sizes, the factor shapes, an existing layer's adapters), so a refused get_peft_model or
    add_adapter leaves the model as it was."""

    prefix = "adapters."
    tuner_layer_cls = NolaLayer
    target_module_mapping: typing.ClassVar[dict] = {}  # no default targets: name them

    def _pre_injection_hook(self, model, config, adapter_name):
        config = _maybe_include_all_linear_layers(dataclasses.replace(config), model)
        adapter_config = config.adapter_config()
        tuner_layers = [name + "." for name, module in model.named_modules() if isinstance(module, NolaLayer)]
        self._placements = {}
        for name, module in model.named_modules():
            if not name or any(name.startswith(prefix) for prefix in tuner_layers):
                continue
            found = self._check_target_module_exists(config, name)
            if found and not isinstance(found, _ExcludedModule):
                placement = plan_placement(name, module, adapter_config, adapter_name)
                if config.fan_in_fan_out and not is_transposed(_base(module)):
                    raise ValueError(
                        f"fan_in_fan_out=True but {name} ({type(_base(module)).__name__}) keeps its weight "
                        "(out, in): set fan_in_fan_out=False (NOLA reads the layout from the layer)"
                    )
                self._placements[name] = placement

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        config = peft_config.adapter_config()
        placement = self._placements.get(current_key) or plan_placement(current_key, target, config, adapter_name)
        if isinstance(target, NolaLayer):
            target.add_adapter(adapter_name, config, placement.seed_a, placement.seed_b)
            target.set_adapter(self.active_adapters)
            return
        layer = NolaLayer(
            target,
            seed_a=placement.seed_a,
            seed_b=placement.seed_b,
            adapter_name=adapter_name,
            backend=peft_config.backend,
            **config.to_dict(),
        )
        layer.set_adapter(self.active_adapters)
        self._replace_module(parent, target_name, layer, target)

    def _post_injection_hook(self, model, config, adapter_name):
        self._placements = {}

    def _unload_and_optionally_merge(self, merge=True, progressbar=False, safe_merge=False, adapter_names=None):
        """PEFT's unload and merge_and_unload: every merge they would refuse is raised before the
        first layer changes, then grouped generation is removed (as nola_kernels.unload does), so
        that the model they give back runs no grouping hook."""
        if merge:
            self._check_merge_allowed()
            for name, layer in self.model.named_modules():
                if isinstance(layer, NolaLayer):
                    layer.adapter_to_merge(safe_merge, adapter_names, where=name)
        ungroup(self)
        return super()._unload_and_optionally_merge(merge, progressbar, safe_merge, adapter_names)


def write_adapter_folder(directory, config, adapters, copies=None):
    """Adapter `adapters` ({module name: NOLAAdapter}, one AdapterConfig `config`) as the folder
    PeftModel.from_pretrained reads: adapter_config.json (a NolaConfig) and
    adapter_model.safetensors (alpha and beta of each module, and the state of `copies`, {module
    name: the copy modules_to_save trains}). The config names the copied modules in full, since
    PEFT picks modules_to_save by any name ending in the string. Returns the two files' size."""
    from safetensors.torch import save

    if config.seed is None:
        raise ValueError(
            "this adapter's layers were built with explicit seeds (no master seed), which a NolaConfig "
            "cannot record: save it to a file path instead"
        )
    copies = copies or {}
    settings = {theirs: _to_peft(getattr(config, ours)) for theirs, ours in CONFIG_FIELD_PAIRS}
    settings["modules_to_save"] = list(copies) or None
    nola_config = NolaConfig(**settings, inference_mode=True)
    directory = Path(check_export_directory(directory))
    tensors = {
        f"{PEFT_PREFIX}{name}.{NolaModel.prefix}{role}": getattr(adapter, role).detach().float().cpu().contiguous()
        for name, adapter in adapters.items()
        for role in ROLES
    }
    tensors.update({PEFT_PREFIX + key: value for key, value in copy_state(copies).items()})
    data = save(tensors, metadata={"format": "pt"})
    nola_config.save_pretrained(str(directory))
    atomic_write_bytes(directory / "adapter_model.safetensors", data)
    return len(data) + (directory / "adapter_config.json").stat().st_size


def _base(module):
    return module.base_layer if isinstance(module, NOLALinear) else module


def _register():
    entries = (
        (PEFT_TYPE_TO_CONFIG_MAPPING, NolaConfig),
        (PEFT_TYPE_TO_TUNER_MAPPING, NolaModel),
        (PEFT_TYPE_TO_PREFIX_MAPPING, NolaModel.prefix),
    )
    for mapping, entry in entries:
        existing = mapping.get(NOLA_PEFT_TYPE)
        if existing is not None and _qualified(existing) != _qualified(entry):
            raise RuntimeError(f"PEFT already has a method registered as {NOLA_PEFT_TYPE!r}: {existing!r}")
    for mapping, entry in entries:
        mapping[NOLA_PEFT_TYPE] = entry


def _qualified(entry):
    # The same class from a reloaded module is this registration again, not a conflict.
    return f"{entry.__module__}.{entry.__qualname__}" if isinstance(entry, type) else entry


_register()

__all__ = [
    "NOLA_PEFT_TYPE",
    "TESTED_PEFT_VERSIONS",
    "NolaConfig",
    "NolaLayer",
    "NolaModel",
    "write_adapter_folder",
]
