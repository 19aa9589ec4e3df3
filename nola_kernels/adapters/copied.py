"""modules_to_save: a module trained whole beside the adapters (a new classifier head, say). The
model's module stays as it was; each adapter trains its own copy, and the active adapter's copy
runs. Attribute names follow PEFT's ModulesToSaveWrapper, so state dict keys read
`head.modules_to_save.<adapter>.weight` there and here."""

import copy

from torch import nn


class CopiedModule(nn.Module):
    """`original_module` (frozen, as the model had it) and `modules_to_save`, one trainable copy
    per adapter name. With no active adapter the original runs."""

    def __init__(self, original, adapter_name):
        super().__init__()
        self.original_module = original
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter = None
        self.training = original.training
        self.add_copy(adapter_name)

    def add_copy(self, name):
        """A copy of the original, as it is now, for adapter `name`; it becomes the active one."""
        self.modules_to_save[name] = copy.deepcopy(self.original_module)
        self.active_adapter = name

    def set_active(self, name):
        self.active_adapter = name if name in self.modules_to_save else None

    def delete_copy(self, name):
        del self.modules_to_save[name]
        if self.active_adapter == name:
            self.active_adapter = None

    @property
    def active_module(self):
        return self.original_module if self.active_adapter is None else self.modules_to_save[self.active_adapter]

    def forward(self, *args, **kwargs):
        return self.active_module(*args, **kwargs)


def copied_modules(model):
    """{name: CopiedModule} of every module of `model` trained whole, in module order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, CopiedModule)}


def adapter_copies(model, adapter_name):
    """{name: the copy adapter `adapter_name` trains} of every CopiedModule that has one."""
    return {
        name: module.modules_to_save[adapter_name]
        for name, module in copied_modules(model).items()
        if adapter_name in module.modules_to_save
    }


def copy_state(copies):
    """{"<module name>.<state dict key>": tensor} of `copies` ({name: module}), on the CPU."""
    return {
        f"{name}.{key}": value.detach().cpu().contiguous()
        for name, module in copies.items()
        for key, value in module.state_dict().items()
    }
