"""A re-implementation of the official NOLA GPT-2 code (github UCDvision/NOLA, gpt/src/model_nola.py)
from its published behaviour: the reference the official-checkpoint tests compare against."""

import copy
import math

import torch

EMBED, RANK, K = 32, 2, 16
FIELDS = ("coefficients", "seed", "weight")


def official_weight(fields):
    """The official NOLALinear's weight (model_nola.py): torch.manual_seed(seed), uniform_(-1, 1)
    over the whole (k, out, in) tensor, times 1/sqrt(k), einsum with the coefficients, plus the
    dense weight."""
    coefficients, weight = fields["coefficients"], fields["weight"]
    with torch.random.fork_rng():
        torch.manual_seed(int(fields["seed"]))
        basis = torch.zeros(coefficients.numel(), *weight.shape).uniform_(-1.0, 1.0)
    return torch.einsum("b,boi->oi", coefficients, basis * (1.0 / math.sqrt(coefficients.numel()))) + weight


# The official GPT-2 adapters of one block: (name, in, out) of each LoRA(in, out).
GPT2_ADAPTERS = (("attn.nola_query", EMBED, EMBED), ("attn.nola_value", EMBED, EMBED))
GPT2_MLP_ADAPTERS = (("mlp.p1_nola", EMBED, 4 * EMBED), ("mlp.p2_nola", 4 * EMBED, EMBED))


def official_gpt2_state(adapters, blocks=2):
    """The "lora_" keys of an official GPT-2 model: each LoRA holds lora_A = NOLALinear(in, r) and
    lora_B = NOLALinear(r, out), each with weight, seed (int64 in [0, 1e10)) and coefficients."""
    state = {}
    for block in range(blocks):
        for name, in_features, out_features in adapters:
            prefix = f"transformer.h.{block}.{name}"
            for role, shape in (("A", (RANK, in_features)), ("B", (out_features, RANK))):
                state[f"{prefix}.lora_{role}.weight"] = 0.02 * torch.randn(shape)
                state[f"{prefix}.lora_{role}.seed"] = torch.randint(int(1e10), (1,))
                state[f"{prefix}.lora_{role}.coefficients"] = torch.randn(K)
    return state


def fields_of(state, prefix, role):
    return {f: state[f"{prefix}.lora_{role}.{f}"] for f in FIELDS}


def official_gpt2_run(model, state, tokens, scaling):
    """The official GPT-2 forward on transformers' GPT-2: query/value += nola_query/value(h) of the
    attention input; MLP: act(c_fc(x) + p1(x)), then c_proj(h) + p2(h)."""
    model = copy.deepcopy(model)

    def lora(prefix):
        a, b = official_weight(fields_of(state, prefix, "A")), official_weight(fields_of(state, prefix, "B"))
        return lambda x: (x @ a.T) @ b.T * scaling

    def add_to_output(delta):
        return lambda module, inputs, output: output + delta(inputs[0])

    for block, layer in enumerate(model.transformer.h):
        prefix = f"transformer.h.{block}"
        if f"{prefix}.attn.nola_query.lora_A.seed" in state:
            query, value = lora(f"{prefix}.attn.nola_query"), lora(f"{prefix}.attn.nola_value")

            def attention(module, inputs, output, query=query, value=value):
                q, k, v = output.split(EMBED, dim=-1)
                return torch.cat([q + query(inputs[0]), k, v + value(inputs[0])], dim=-1)

            layer.attn.c_attn.register_forward_hook(attention)
        if f"{prefix}.mlp.p1_nola.lora_A.seed" in state:
            layer.mlp.c_fc.register_forward_hook(add_to_output(lora(f"{prefix}.mlp.p1_nola")))
            layer.mlp.c_proj.register_forward_hook(add_to_output(lora(f"{prefix}.mlp.p2_nola")))
    with torch.no_grad():
        return model(tokens).logits
