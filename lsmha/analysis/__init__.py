"""Single-head performance (SHP) analysis (paper §2, Tables 1-2, Figs. 3-4; definitions in docs/shp.md).

heads     frozen truncated tokens, the bias-free SeqPool + Linear classifier head, its training
matrices  SHP matrices by silencing every other head's FC inputs; HP via averaged SNP matrices
clusters  thresholding, greedy clusters, per-head and per-block statistics, one table row
block     one block measured end to end, stored for resumable runs
tables    markdown / CSV / JSON
plots     Fig. 3 per head, Fig. 4 SHP vs HP, Attn. Acc. and SNR along the blocks (matplotlib)
cli       `lsmha-shp`
"""

from .block import BlockResult, analyse_block
from .clusters import (
    Aggregate,
    BlockRow,
    HeadStats,
    aggregate,
    aggregate_from_table,
    block_row,
    clip,
    cluster_permutation,
    find_clusters,
    head_stats,
    head_stats_boolean,
)
from .heads import ClassifierHead, HeadEvaluation, HeadRecipe, evaluate_head, token_source, train_head
from .matrices import head_columns, hp_from_snp, normalise, shp_fields, snp_fields
from .tables import csv_table, markdown_table, write_json

__all__ = [
    "Aggregate",
    "BlockResult",
    "BlockRow",
    "ClassifierHead",
    "HeadEvaluation",
    "HeadRecipe",
    "HeadStats",
    "aggregate",
    "aggregate_from_table",
    "analyse_block",
    "block_row",
    "clip",
    "cluster_permutation",
    "csv_table",
    "evaluate_head",
    "find_clusters",
    "head_columns",
    "head_stats",
    "head_stats_boolean",
    "hp_from_snp",
    "markdown_table",
    "normalise",
    "shp_fields",
    "snp_fields",
    "token_source",
    "train_head",
    "write_json",
]
