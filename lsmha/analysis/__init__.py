"""Single-head performance (SHP) analysis (paper §2, Tables 1-2, Figs. 3-4; definitions in docs/shp.md).

heads     frozen truncated tokens, the bias-free SeqPool + Linear classifier head, its training
matrices  SHP matrices by silencing every other head's FC inputs; HP via averaged SNP matrices
clusters  thresholding, greedy clusters, per-head and per-block statistics, one table row
block     one block measured end to end, stored for resumable runs
tables    markdown / CSV / JSON
plots     Fig. 3 per head, Fig. 4 SHP vs HP, Attn. Acc. and SNR along the blocks (matplotlib)
cli       `lsmha-shp`

Light on import: each name loads its module (and torch) on first use, so `lsmha-shp --help`
answers before torch loads.
"""

from ..lazy import lazy_getattr

_LAZY = {
    "BlockResult": "block",
    "analyse_block": "block",
    "Aggregate": "clusters",
    "BlockRow": "clusters",
    "HeadStats": "clusters",
    "aggregate": "clusters",
    "aggregate_from_table": "clusters",
    "block_row": "clusters",
    "clip": "clusters",
    "cluster_permutation": "clusters",
    "find_clusters": "clusters",
    "head_stats": "clusters",
    "head_stats_boolean": "clusters",
    "ClassifierHead": "heads",
    "HeadEvaluation": "heads",
    "HeadRecipe": "heads",
    "evaluate_head": "heads",
    "token_source": "heads",
    "train_head": "heads",
    "head_columns": "matrices",
    "hp_from_snp": "matrices",
    "normalise": "matrices",
    "shp_fields": "matrices",
    "snp_fields": "matrices",
    "csv_table": "tables",
    "markdown_table": "tables",
    "write_json": "tables",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
