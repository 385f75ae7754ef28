"""A plain PyTorch encoder on a compositional task: is a failure ponder's, or the task's?

    python benchmarks/plain_encoder.py --task graph-reach --norm post --steps 3000
    python benchmarks/plain_encoder.py --task khop --layout pairs --steps 2000

Trains `nn.TransformerEncoder` (hidden 64, 4 heads, feed-forward 256, no dropout,
learned positions, AdamW, batch 64, one thread) on `--train` generated problems of
depths 1-4 and prints, every 500 updates, the training loss and the exact accuracy on
500 validation problems (for khop also the accuracy of the first hop alone). Nothing of
ponder's models is used, so a setting that blocks learning here blocks it for any model.

`--layout pairs` rewrites khop's table (slot a holds f(a)) as the fact pairs
(a, f(a)) in a shuffled order, the layout khop had before: the same problems, the
lookup now a match of tokens instead of a read by position. `--position-std`: the
learned positions' initial scale (the token embeddings' is 1).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn as nn

from ponder.tasks import compositional as C


def as_pairs(inputs: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """khop rows (N, 41) in the table layout -> (N, 65) in the fact-pair layout."""
    n, E = len(inputs), C.KHOP_ENTITIES
    order = np.random.default_rng(seed).permuted(np.tile(np.arange(E), (n, 1)), axis=1)  # (N, E) fact order per row
    facts = np.stack([order, np.take_along_axis(inputs[:, :E], order, axis=1)], axis=2).reshape(n, 2 * E)  # a, f(a), ...
    tail = inputs[:, E:]  # query and hop slots
    return np.concatenate([facts, tail], 1), np.concatenate([np.full((n, 2 * E), C.IGNORE), labels[:, E:]], 1)


class Encoder(nn.Module):
    def __init__(self, vocab: int, length: int, norm: str, position_std: float, dim: int = 64, layers: int = 2):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)  # N(0, 1)
        self.positions = nn.Parameter(torch.randn(length, dim) * position_std)
        layer = nn.TransformerEncoderLayer(dim, 4, 4 * dim, 0.0, batch_first=True, norm_first=norm == "pre")
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L) tokens -> (B, L, V) logits."""
        return self.out(self.encoder(self.tokens(x) + self.positions))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=list(C.TASKS), required=True)
    parser.add_argument("--norm", choices=("pre", "post"), default="pre")
    parser.add_argument("--layout", choices=("table", "pairs"), default="table", help="khop only")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train", type=int, default=100_000)
    parser.add_argument("--position-std", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    data = {}
    for split, n in (("train", args.train), ("val", 500)):
        inputs, labels, _ = C.generate(args.task, n, (1, 4), args.seed, split)
        if args.task == "khop" and args.layout == "pairs":
            inputs, labels = as_pairs(inputs, labels, args.seed + (split == "val"))
        data[split] = torch.as_tensor(inputs).long(), torch.as_tensor(labels).long()
    (x, y), (xv, yv) = data["train"], data["val"]
    vocab = C.TASKS[args.task].vocab
    model = Encoder(vocab, x.shape[1], args.norm, args.position_std)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    first_hop = (x.shape[1] - C.KHOP_MAX_DEPTH) if args.task == "khop" else None  # the column of hop 1
    start = time.time()
    for step in range(1, args.steps + 1):
        rows = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(model(x[rows]).reshape(-1, vocab), y[rows].reshape(-1), ignore_index=C.IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0:
            with torch.no_grad():
                right = (model(xv).argmax(-1) == yv) | (yv == C.IGNORE)  # (500, L)
            line = f"step {step}  loss {loss.item():.3f}  val exact {right.all(1).float().mean():.3f}"
            if first_hop is not None:
                line += f"  first hop {right[:, first_hop].float().mean():.3f}"
            print(line + f"  {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
