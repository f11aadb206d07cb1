"""Single-head performance (SHP) analysis."""
