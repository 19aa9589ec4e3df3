"""Serve several NOLA adapters of one base model in one batch.

A small random GPT-2 stands in for the base model. Three adapters are "trained" (random
coefficients here) and saved, each a file of a few kilobytes; a server process loads them all
into one fresh base model (load_adapters), then answers a batch whose rows ask for different
adapters, or for the base model, with one generate() call inside row_adapters. Each row's tokens
are checked against running that row alone with its adapter active.

    python examples/serve_adapters.py [--new-tokens 8]
"""

import argparse
import tempfile
from pathlib import Path

import torch
import transformers

import nola_kernels

TARGETS = ["c_attn", "c_proj"]
ADAPTERS = ("summarize", "translate", "classify")


def base_model():
    config = transformers.GPT2Config(vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=2)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def train_and_save(folder):
    """One file per adapter; all share the master seed, so each module's bases are one family."""
    model = base_model()
    paths = {}
    for name in ADAPTERS:
        nola_kernels.inject(model, TARGETS, rank=4, num_basis=64, seed=42, adapter_name=name)
        with torch.no_grad():
            for layer in nola_kernels.adapted_modules(model).values():
                layer.adapters[name].alpha.normal_()
                layer.adapters[name].beta.normal_()
        paths[name] = Path(folder) / f"{name}.safetensors"
        size = nola_kernels.save_adapter(model, paths[name], name)
        print(f"saved {name:<10} {size:>6} bytes")
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = train_and_save(folder)
        server = base_model()
        nola_kernels.load_adapters(server, paths)
    rows = ["translate", None, "summarize", "classify", "translate"]
    prompts = torch.randint(1, 128, (len(rows), 6), generator=torch.Generator().manual_seed(1))
    settings = dict(max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        with nola_kernels.row_adapters(server, rows):
            batch = server.generate(prompts, attention_mask=torch.ones_like(prompts), **settings)
        alone = []
        for i, name in enumerate(rows):
            nola_kernels.set_active_adapter(server, name)
            alone.append(
                server.generate(
                    prompts[i : i + 1], attention_mask=torch.ones_like(prompts[i : i + 1]), **settings
                )
            )
    for name, tokens in zip(rows, batch, strict=True):
        print(f"{name!s:<10} -> {tokens[prompts.shape[1] :].tolist()}")
    same = torch.equal(batch, torch.cat(alone))
    print(
        f"one batch, {len(set(rows) - {None})} adapters: {'matches' if same else 'DIFFERS FROM'} each row run alone"
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
