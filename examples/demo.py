"""`make demo`: few-shot transfer on scikit-learn's 8x8 digits.

A small MLP backbone is pretrained on digits 0-4, then adapted to digits 5-9 from a few labelled
examples per class, three ways: a linear probe (a new head only), LoRA r=1 on the hidden layers
(plus the head), and NOLA on the same layers (plus the head). Prints trainable parameters, bytes
on disk, accuracy (mean and spread over seeds) and time, and plots accuracy against trainable
parameters. On a GPU the NOLA layers run the kernels (backend "auto")."""

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torch import nn

from nola_kernels import SPEC_VERSION, inject, save_adapter

HIDDEN = ["body.0", "body.2", "body.4"]  # the backbone's linear layers
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Backbone(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU()
        )
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        return self.head(self.body(x))


class LoRALinear(nn.Module):
    """The LoRA baseline: base(x) + (x A^T) B^T, B zero at the start."""

    def __init__(self, base, rank):
        super().__init__()
        self.base = base
        self.a = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)
        self.b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + (x @ self.a.T) @ self.b.T


def split_digits():
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    return (x[y < 5], y[y < 5]), (x[y >= 5], y[y >= 5] - 5)


def train(model, x, y, steps, lr):
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def pretrain(source):
    torch.manual_seed(0)
    model = Backbone(classes=5).to(DEVICE)
    train(model, *(t.to(DEVICE) for t in source), steps=300, lr=3e-3)
    return model


def few_shot_split(target, shots, seed):
    x, y = target
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=generator)
    chosen = torch.cat([order[y[order] == c][:shots] for c in range(5)])
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[chosen] = False
    return (x[chosen], y[chosen]), (x[rest], y[rest])


def new_head(backbone, seed):
    model = Backbone(classes=5).to(DEVICE)
    model.body.load_state_dict(backbone.body.state_dict())
    torch.manual_seed(seed)
    model.head.reset_parameters()
    return model


def linear_probe(model, seed, directory):
    model.requires_grad_(False).head.requires_grad_(True)
    return lambda: save_file(dict(model.head.state_dict()), directory / "head.safetensors")


def lora(model, seed, directory):
    model.requires_grad_(False)
    for name in HIDDEN:
        index = int(name.split(".")[1])
        model.body[index] = LoRALinear(model.body[index], rank=1)
    model.head.requires_grad_(True)
    trained = {k: v for k, v in model.state_dict().items() if k.endswith((".a", ".b")) or k.startswith("head.")}
    return lambda: save_file({k: v.contiguous() for k, v in trained.items()}, directory / "lora.safetensors")


def nola(model, seed, directory, num_basis=64):
    inject(model, HIDDEN, rank=4, num_basis=num_basis, seed=seed, lora_alpha=8.0)
    model.head.requires_grad_(True)

    def save():
        save_adapter(model, directory / "nola.safetensors")
        save_file(dict(model.head.state_dict()), directory / "head.safetensors")

    return save


METHODS = {
    "linear probe": linear_probe,
    "LoRA r=1": lora,
    "NOLA k=l=16": functools.partial(nola, num_basis=16),
    "NOLA k=l=64": functools.partial(nola, num_basis=64),
}


def run(method, backbone, target, shots, seed, steps):
    (x, y), (x_test, y_test) = few_shot_split(target, shots, seed)
    model = new_head(backbone, seed)
    with tempfile.TemporaryDirectory() as directory:
        save = METHODS[method](model, seed, Path(directory))
        start = time.perf_counter()
        train(model, x.to(DEVICE), y.to(DEVICE), steps=steps, lr=1e-2)
        seconds = time.perf_counter() - start
        save()
        size = sum(f.stat().st_size for f in Path(directory).iterdir())
    with torch.no_grad():
        accuracy = (model(x_test.to(DEVICE)).argmax(-1).cpu() == y_test).float().mean().item()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return dict(params=params, bytes=size, accuracy=accuracy, seconds=seconds)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5))
    for name, row in rows.items():
        axes.errorbar(row["params"], row["mean"], yerr=row["spread"], fmt="o", capsize=4, label=name)
    axes.set_xscale("log")
    axes.set_xlabel("trainable parameters (head included)")
    axes.set_ylabel("test accuracy, digits 5-9")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=5, help="labelled examples per new class")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--plot", type=Path, default=Path("demo-output/fewshot_digits.png"))
    args = parser.parse_args()
    if DEVICE.type == "cpu":
        # These tensors are tiny: a second thread costs more in synchronization than it saves
        # (10x more on a busy 2-core machine).
        torch.set_num_threads(1)
    print(f"nola_kernels demo ({SPEC_VERSION}), torch {torch.__version__} on {DEVICE}")
    start = time.perf_counter()
    source, target = split_digits()
    backbone = pretrain(source)
    print(f"backbone pretrained on digits 0-4; adapting to digits 5-9 from {args.shots} shots per class")
    print(f"over {args.seeds} seeds, {args.steps} full-batch Adam steps each\n")
    print(f"{'method':<14}{'trainable':>10}{'bytes on disk':>15}{'accuracy':>17}{'train s':>9}")
    rows = {}
    for method in METHODS:
        runs = [run(method, backbone, target, args.shots, seed, args.steps) for seed in range(args.seeds)]
        accuracies = [r["accuracy"] for r in runs]
        rows[method] = row = dict(
            params=runs[0]["params"],
            bytes=runs[0]["bytes"],
            mean=statistics.mean(accuracies),
            spread=statistics.stdev(accuracies),
            seconds=statistics.mean(r["seconds"] for r in runs),
        )
        accuracy = f"{100 * row['mean']:.1f} +- {100 * row['spread']:.1f}%"
        print(f"{method:<14}{row['params']:>10}{row['bytes']:>15}{accuracy:>17}{row['seconds']:>9.2f}")
    plot(rows, args.plot)
    print("\naccuracy: mean +- standard deviation over seeds; bytes: the saved adapter and head files")
    print(f"plot: {args.plot}")
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
