"""Small models the adapter tests inject into: a ViT-like encoder (nn.Linear everywhere) and a
tiny random GPT-2 from transformers (Conv1D layers, weight stored (in, out))."""

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
