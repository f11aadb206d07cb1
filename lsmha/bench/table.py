"""Plain-text tables for the terminal: the one formatter every lsmha command prints with."""

from __future__ import annotations

from ..tables import format_table

__all__ = ["format_table"]
