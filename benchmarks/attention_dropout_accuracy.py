"""Same seed, same data, same recipe: a short Fashion-MNIST training run through each
attention-dropout path (SDPA's math fallback against `chunked_dropout_attention`), and
the validation accuracy of each, so a change of path that changed what is trained shows.

    python benchmarks/attention_dropout_accuracy.py --images 2000 --steps 200 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lsmha.models import create_model
from lsmha.training import load_dataset
from lsmha.training.loop import soft_target_cross_entropy
from lsmha.training.throughput import set_attention_path


def run(path: str, images, labels, val_x, val_y, steps: int, batch: int, seed: int) -> dict:
    torch.manual_seed(seed)
    net = create_model("cct_1_3x1", dim=64, heads=8, num_classes=10).train()
    set_attention_path(net, path)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    order = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=order)
        loss = soft_target_cross_entropy(net(images[idx]), torch.nn.functional.one_hot(labels[idx], 10).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(val_x[i : i + 256]).argmax(1) for i in range(0, len(val_x), 256)])
    return {"val_accuracy": (pred == val_y).float().mean().item(), "final_loss": loss.item(), "train_s": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000, help="training images (the first of the train split)")
    ap.add_argument("--val", type=int, default=1000, help="validation images")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    images, labels = load_dataset("fashion-mnist", "train", limit=args.images)
    val_x, val_y = load_dataset("fashion-mnist", "val", limit=args.val)
    result = {"model": "cct_1_3x1:dim=64:heads=8:num_classes=10", "attn_dropout": 0.1, **vars(args), "runs": {}}
    for seed in args.seeds:
        for path in ("sdpa", "chunked"):
            r = run(path, images, labels, val_x, val_y, args.steps, args.batch_size, seed)
            result["runs"][f"{path}/seed{seed}"] = r
            print(path, seed, r, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
