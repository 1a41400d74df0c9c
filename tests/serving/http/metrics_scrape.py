"""Reading a Prometheus exposition in tests: every sample by name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(exposition: str) -> Samples:
    """Every sample of the exposition, keyed by (sample name, its labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def value(scraped: Samples, name: str, **labels: str) -> float | None:
    """The sample `name` with exactly `labels`, or None when it is not exported."""
    return scraped.get((name, frozenset(labels.items())))


def names(scraped: Samples) -> set[str]:
    """The names of the samples exported (histograms as _bucket, _sum and _count)."""
    return {name for name, _ in scraped}
