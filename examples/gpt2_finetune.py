"""Fine-tune GPT-2 with NOLA adapters on a text file, then save, merge and export them.

    python examples/gpt2_finetune.py --model gpt2 --text my_corpus.txt      # real weights
    python examples/gpt2_finetune.py --tiny                                 # tiny random GPT-2

--model takes a local directory or a hub name that transformers can load here (a machine without
network needs a local copy). --tiny builds a small random GPT-2 that needs no download and
reads bytes as tokens: a smoke test of the whole workflow. The adapter goes on the fused q/k/v
projection (c_attn) of every block, as the official NOLA GPT-2 runs adapt q and v (rank 8)."""

import argparse
import time
from pathlib import Path

import torch
import transformers

from nola_kernels import export_peft_lora, inject, load_adapter, merge_and_unload, save_adapter

SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. NOLA trains only the coefficients of random bases, "
    "so an adapter of a large model fits in a few kilobytes. "
) * 20


def tiny_model_and_tokens(text):
    config = transformers.GPT2Config(
        vocab_size=256, n_positions=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config), torch.tensor(list(text.encode()))


def pretrained_model_and_tokens(name, text):
    tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    model = transformers.GPT2LMHeadModel.from_pretrained(name)
    return model, torch.tensor(tokenizer(text)["input_ids"])


def base_model_and_tokens(args, text):
    torch.manual_seed(0)  # the tiny model's random weights: the same on every call
    return tiny_model_and_tokens(text) if args.tiny else pretrained_model_and_tokens(args.model, text)


def windows(tokens, length, batch, generator):
    starts = torch.randint(0, len(tokens) - length, (batch,), generator=generator)
    return torch.stack([tokens[s : s + length] for s in starts])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2", help="local directory or hub name of a GPT-2")
    parser.add_argument("--tiny", action="store_true", help="a tiny random GPT-2 instead of --model")
    parser.add_argument("--text", type=Path, help="training text (default: a built-in sample)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--num-basis", type=int, default=512)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--length", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--out", type=Path, default=Path("gpt2-nola"))
    args = parser.parse_args()

    text = args.text.read_text() if args.text else SAMPLE_TEXT
    model, tokens = base_model_and_tokens(args, text)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    names = inject(model, ["c_attn"], rank=args.rank, num_basis=args.num_basis, lora_alpha=2 * args.rank, seed=0)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{len(names)} adapted layers, {trainable} trainable parameters on {device}")

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for step in range(args.steps + 1):
        batch = windows(tokens, args.length, args.batch, generator).to(device)
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % max(1, args.steps // 5) == 0:
            print(f"step {step:>5}  loss {loss.item():.4f}")
    print(f"{args.steps} steps in {time.perf_counter() - start:.1f} s")

    args.out.mkdir(parents=True, exist_ok=True)
    size = save_adapter(model, args.out / "nola_adapter.safetensors")
    print(f"NOLA adapter: {args.out / 'nola_adapter.safetensors'} ({size} bytes)")
    export_peft_lora(model, args.out / "peft_lora", base_model_name_or_path=None if args.tiny else args.model)
    print(f"PEFT LoRA export (vLLM, PeftModel): {args.out / 'peft_lora'}")

    model.eval()
    probe = windows(tokens, args.length, 2, generator).to(device)
    with torch.no_grad():
        adapted = model(probe).logits
        reloaded = base_model_and_tokens(args, text)[0].to(device).eval()
        load_adapter(reloaded, args.out / "nola_adapter.safetensors")
        reloaded_logits = reloaded(probe).logits
        merged = merge_and_unload(model)(probe).logits
    print(f"reloaded adapter vs trained: max |difference| {(reloaded_logits - adapted).abs().max().item():.2e}")
    print(f"merged model vs adapted model: max |difference| {(merged - adapted).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
