"""Small models the adapter tests inject into: a ViT-like encoder (nn.Linear everywhere), a tiny
random GPT-2 from transformers (Conv1D layers, weight stored (in, out)) and a tiny random Llama."""

import pytest
import torch
from torch import nn

from nola_kernels import adapted_modules


class Block(nn.Module):
    def __init__(self, width, heads=2):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.query = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(self.query(h), h, self.value(h), need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patches of a (batch, tokens, patch) input -> class logits."""

    def __init__(self, patch=12, width=24, depth=2, classes=3):
        super().__init__()
        self.embed = nn.Linear(patch, width)
        self.blocks = nn.Sequential(*(Block(width) for _ in range(depth)))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)).mean(1))


def tiny_gpt2(seed=0):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config).eval()


def tiny_llama(seed=0):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def randomize_coefficients(model, adapter_name="default"):
    """Random non-zero coefficients for `adapter_name` wherever `model` (or a layer) has it."""
    with torch.no_grad():
        for layer in adapted_modules(model).values():
            if adapter_name in layer.adapters:
                layer.adapters[adapter_name].alpha.normal_()
                layer.adapters[adapter_name].beta.normal_()


def coefficients(model, adapter_name="default"):
    """{"<module>.alpha" / "<module>.beta": a copy of the coefficients}."""
    return {
        f"{n}.{role}": getattr(m.adapters[adapter_name], role).detach().clone()
        for n, m in adapted_modules(model).items()
        for role in ("alpha", "beta")
    }


def _bits(tensor):
    if tensor.device.type == "meta":
        return None
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _tensor_state(tensor):
    return (type(tensor).__name__, tensor.dtype, tuple(tensor.shape), str(tensor.device), tensor.requires_grad,
            _bits(tensor))  # fmt: skip


def snapshot(model):
    """Everything a refused call must leave alone: the module tree (names, types, identities,
    training flags), every parameter and buffer bit for bit with its requires_grad flag, and each
    adapted layer's adapters, active and merged adapter, seeds and configs."""
    modules = [
        (name, type(module).__name__, id(module), module.training)
        for name, module in model.named_modules(remove_duplicate=False)
    ]
    tensors = {
        name: (id(tensor), _tensor_state(tensor))
        for name, tensor in [
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False),
        ]
    }
    layers = {
        name: (
            layer.active_adapter,
            layer.merged_adapter,
            layer.backend,
            [(n, a.config, a.seed_a, a.seed_b) for n, a in layer.adapters.items()],
        )
        for name, layer in adapted_modules(model).items()
    }
    return modules, tensors, layers

