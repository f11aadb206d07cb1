"""`lsmha-shp`: single-head performance of a trained CCT, block by block.

    lsmha-shp --checkpoint ck.safetensors --dataset cifar100 --data-dir D \\
              --blocks 1-7 --threshold 0.3 0.6 --out shp/

writes shp/shp_table.md, shp/shp_table.csv, shp/shp.json and shp/figures/*.png,
and prints the tables. Each finished block is stored in shp/blocks/ and reused by
a rerun with the same checkpoint, data and head settings, so an interrupted run
resumes where it stopped; thresholds, tables and figures are recomputed from the
stored blocks in seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli_help import CliError, HelpFormatter, finish_parser, parse_args, run_command

if TYPE_CHECKING:
    from .block import BlockResult

# torch and the analysis modules load inside `run`, after the arguments are parsed
CACHE_DTYPES = ("float32", "float16", "bfloat16")  # torch dtypes, by name
RESUME_HINT = "run the same command again to continue: finished blocks are kept in OUT/blocks/"


def _threshold(text: str) -> float:
    """One θ; `0.3,0.6` is refused with the form the option takes (values separated by spaces)."""
    try:
        return float(text)
    except ValueError:
        hint = "; give thresholds space-separated, e.g. --threshold 0.3 0.6" if "," in text else ""
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}{hint}") from None


def parse_blocks(text: str, n_blocks: int) -> list[int]:
    """ "all", "7", "1-7" or "1,3,5-7" -> sorted 1-based block indices within 1..n_blocks."""
    if text.strip() == "all":
        return list(range(1, n_blocks + 1))
    blocks: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            a, b = int(lo), int(hi or lo)
            if a > b:
                raise ValueError
            blocks.update(range(a, b + 1))
    except ValueError:
        raise ValueError(f"--blocks expects 'all', 'M', 'A-B' or a comma list like '1,3,5-7', got {text!r}") from None
    bad = sorted(b for b in blocks if not 1 <= b <= n_blocks)
    if bad:
        raise ValueError(f"--blocks {text!r} names blocks {bad}, but the model has blocks 1..{n_blocks}")
    return sorted(blocks)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lsmha-shp",
        description="Single-head performance (SHP) analysis of a trained CCT (paper §2, Tables 1-2, Figs. 3-4).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="trained model (.safetensors written by lsmha.save)")
    p.add_argument(
        "--dataset",
        default=None,
        choices=("cifar100", "fashion-mnist", "digits", "synthetic"),
        help="data set (default: the one the checkpoint records, else cifar100)",
    )
    p.add_argument("--data-dir", default=None, help="CIFAR-100 directory, or Fashion-MNIST's if not the default")
    p.add_argument("--blocks", default="all", help="blocks to analyse: all, M, A-B or 1,3,5-7")
    p.add_argument(
        "--threshold", type=_threshold, nargs="+", default=[0.3, 0.6], metavar="θ", help="thresholds θ in [0, 1)"
    )
    p.add_argument("--at", choices=("attn", "output"), default="attn", help="truncate after QKV attention or block")
    p.add_argument("--out", required=True, help="output directory (also holds the resumable per-block records)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the JSON summary here")
    p.add_argument("--head-epochs", type=int, default=100, help="classifier-head epochs (paper: 100 or 1000)")
    p.add_argument("--head-lr", type=float, default=1e-3, help="classifier-head AdamW learning rate η")
    p.add_argument("--head-weight-decay", type=float, default=6e-2, help="classifier-head AdamW weight decay α")
    p.add_argument("--batch-size", type=int, default=128, help="classifier-head batch size")
    p.add_argument("--seed", type=int, default=0, help="seed of the head's initialisation and batch order")
    p.add_argument("--limit-train", type=int, default=None, help="use the first N training images")
    p.add_argument("--limit-val", type=int, default=None, help="use the first N validation images")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (none: torch's choice)")
    p.add_argument("--cache-gb", type=float, default=8.0, help="token cache budget per split; beyond it recompute")
    p.add_argument(
        "--cache-dtype",
        choices=("auto", *CACHE_DTYPES),
        default="auto",
        help="token cache storage type; auto: float16 on CUDA, float32 on CPU",
    )
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--recompute", action="store_true", help="ignore stored blocks and measure again")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return finish_parser(p)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    return run_command("lsmha-shp", run, args, RESUME_HINT)


def run(args: argparse.Namespace) -> int:
    """Measure (or reuse) every block, then write the tables, figures and JSON."""
    import torch
    from tqdm.auto import tqdm

    from lsmha.artifacts import sha256_file
    from lsmha.models import load
    from lsmha.training.data import load_dataset, num_classes

    from .block import BlockResult, analyse_block
    from .heads import HeadRecipe
    from .tables import write_json

    if any(not 0.0 <= t < 1.0 for t in args.threshold):
        raise CliError.usage(f"--threshold values must lie in [0, 1), got {args.threshold}")
    if args.head_epochs < 1 or args.batch_size < 1:
        raise CliError.usage(
            f"--head-epochs and --batch-size must be >= 1, got {args.head_epochs} and {args.batch_size}"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args.checkpoint)
    args.dataset = args.dataset or model.facts.get("dataset", "cifar100")
    blocks = parse_blocks(args.blocks, model.spec.n_blocks)  # a ValueError here is bad usage (2)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    out = Path(args.out)
    cache_name = args.cache_dtype
    if cache_name == "auto":
        cache_name = "float16" if torch.device(device).type == "cuda" else "float32"
    cache_dtype = getattr(torch, cache_name)
    labels = num_classes(args.dataset)
    train = load_dataset(args.dataset, "train", args.data_dir, limit=args.limit_train)
    val = load_dataset(args.dataset, "val", args.data_dir, limit=args.limit_val)
    recipe = HeadRecipe(
        epochs=args.head_epochs,
        lr=args.head_lr,
        weight_decay=args.head_weight_decay,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    meta = {"checkpoint_sha256": sha256_file(args.checkpoint), "dataset": args.dataset, "num_classes": labels}
    expected = meta | {"recipe": recipe.__dict__, "n_train": int(train[0].shape[0]), "n_val": int(val[0].shape[0])}

    results: list[BlockResult] = []
    for block in tqdm(blocks, desc="SHP blocks", disable=args.quiet):
        record = out / "blocks" / f"block{block}_{args.at}.npz"
        if record.is_file() and not args.recompute:
            stored = BlockResult.load(record)
            if _same(stored.meta, expected) and stored.at == args.at:
                results.append(stored)
                continue
            tqdm.write(f"block {block}: stored record was made with other settings; measuring again", file=sys.stderr)
        try:
            result = analyse_block(
                model,
                train,
                val,
                block,
                labels,
                at=args.at,
                recipe=recipe,
                device=device,
                cache_bytes=args.cache_gb * 2**30,
                cache_dtype=cache_dtype,
                progress=not args.quiet,
                meta=meta,
            )
        except FloatingPointError as err:  # the head diverged: the measurement failed, not the usage
            raise CliError(f"block {block}: {err}") from err
        result.save(record)
        results.append(result)

    doc = report(results, args, out, model.spec.name or "model")
    print(doc["markdown"])
    write_json(out / "shp.json", doc["json"])
    if args.json:
        write_json(args.json, doc["json"])
    return 0


def _same(stored: dict[str, Any], expected: dict[str, Any]) -> bool:
    return all(stored.get(k) == v for k, v in expected.items())


def report(results: list[BlockResult], args: argparse.Namespace, out: Path, name: str) -> dict[str, Any]:
    """Rows for every (block, θ), the tables and figures; returns the markdown and the JSON document."""
    from .clusters import block_row
    from .matrices import hp_from_snp
    from .tables import csv_table, markdown_table

    rows, blocks_doc = [], []
    figures = out / "figures"
    for res in results:
        normalised, maxima = res.normalised()
        entry: dict[str, Any] = {"block": res.block, "heads": res.heads, "attn_acc": res.attn_acc}
        entry |= {"maxima": maxima.tolist(), "thresholds": {}}
        for theta in args.threshold:
            row, stats = block_row(normalised, theta, attn_acc=res.attn_acc, block=res.block)
            rows.append(row)
            entry["thresholds"][f"{theta:g}"] = {"row": row.to_dict(), "heads": [s.to_dict() for s in stats]}
            if not args.no_figures:
                from .plots import plot_head

                for h, (m, s) in enumerate(zip(normalised, stats)):
                    plot_head(
                        m,
                        theta,
                        s,
                        figures / f"block{res.block}_head{h + 1}_theta{theta:g}.png",
                        title=f"{name}: block {res.block} ({res.at}), head {h + 1} of {res.heads}",
                    )
        if not args.no_figures:
            from .plots import plot_shp_vs_hp

            plot_shp_vs_hp(
                normalised[0],
                hp_from_snp(res.label_means, res.weight, res.heads, 0),
                args.threshold,
                figures / f"block{res.block}_head1_shp_vs_hp.png",
                title=f"{name}: block {res.block}, head 1 — SHP vs HP via SNP",
            )
        blocks_doc.append(entry)
    if not args.no_figures and rows:
        from .plots import plot_blocks

        plot_blocks(rows, figures / "blocks_acc_snr.png", title=f"{name}: Attn. Acc. and SNR along the blocks")
    title = f"SHP of {name} ({args.dataset}, truncated at {args.at})"
    markdown = markdown_table(rows, title)
    out.mkdir(parents=True, exist_ok=True)
    (out / "shp_table.md").write_text(markdown)
    (out / "shp_table.csv").write_text(csv_table(rows))
    doc = {
        "format": "lsmha-shp-1",
        "checkpoint": str(args.checkpoint),
        "dataset": args.dataset,
        "at": args.at,
        "thresholds": list(args.threshold),
        "head_epochs": args.head_epochs,
        "rows": [r.to_dict() for r in rows],
        "blocks": blocks_doc,
    }
    return {"markdown": markdown, "json": doc}


if __name__ == "__main__":
    sys.exit(main())
