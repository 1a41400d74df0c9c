"""Plain Python the assets call (no Dagster imports): training loops, export, metrics."""
