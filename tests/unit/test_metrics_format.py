"""meta1py.metrics: the counters and the text format, read back by Prometheus's own parser."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meta1py.metrics import (
    CATALOGUE,
    OTHER,
    QMGR_BOUNCED,
    QMGR_DELIVERY_DELAY,
    QMGR_DELIVERY_FAILURES,
    QMGR_RECEIVED,
    SMTPS_REJECTED,
    Counters,
    Exposition,
    counter_samples,
    format_number,
    total,
)


def parsed(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``{sample name: {sorted labels: value}}`` as prometheus_client reads ``text``."""
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_counters_count_by_label_values() -> None:
    counters = Counters()
    counters.inc(QMGR_RECEIVED)
    counters.inc(QMGR_RECEIVED, by=2)
    counters.inc(SMTPS_REJECTED, "rcpt", "5.7.1")
    counters.inc(SMTPS_REJECTED, "rcpt", "5.7.1")
    counters.inc(SMTPS_REJECTED, "connect", "4.7.0")
    assert counters.get(QMGR_RECEIVED) == 3
    assert counters.get(SMTPS_REJECTED, "rcpt", "5.7.1") == 2
    assert total(counters.items(), SMTPS_REJECTED) == 3
    assert sorted(counter_samples(counters.items(), SMTPS_REJECTED)) == [
        (("connect", "4.7.0"), 1),
        (("rcpt", "5.7.1"), 2),
    ]


def test_a_counter_refuses_the_wrong_number_of_labels() -> None:
    with pytest.raises(ValueError, match="takes labels"):
        Counters().inc(SMTPS_REJECTED, "rcpt")


def test_the_version_moves_with_every_change() -> None:
    counters = Counters()
    before = counters.version
    counters.inc(QMGR_RECEIVED)
    counters.observe(QMGR_DELIVERY_DELAY, 1.0)
    assert counters.version == before + 2


def test_bounded_labels_keep_the_first_values_and_sum_the_rest_under_other() -> None:
    counters = Counters()
    seen = [counters.bounded(QMGR_DELIVERY_FAILURES, dest, 2) for dest in ("a", "b", "c", "a", "d", "b")]
    assert seen == ["a", "b", OTHER, "a", OTHER, "b"]
    # A destination literally called "other" never takes a slot of its own.
    assert Counters().bounded(QMGR_DELIVERY_FAILURES, OTHER, 5) == OTHER


def test_a_page_of_every_kind_parses_with_prometheus_client() -> None:
    counters = Counters()
    counters.inc(QMGR_RECEIVED, by=5)
    counters.inc(QMGR_BOUNCED, "expired")
    counters.inc(SMTPS_REJECTED, "rcpt", "5.1.1")
    for delay in (0.05, 0.7, 3.0, 1e9):
        counters.observe(QMGR_DELIVERY_DELAY, delay)
    page = Exposition()
    for metric in (QMGR_RECEIVED, QMGR_BOUNCED, SMTPS_REJECTED):
        page.family(metric, counter_samples(counters.items(), metric))
    page.histogram(QMGR_DELIVERY_DELAY, *counters.histogram(QMGR_DELIVERY_DELAY))
    text = page.text()
    assert text.endswith("\n")
    samples = parsed(text)
    assert samples["meta1_messages_received_total"] == {(): 5}
    assert samples["meta1_recipients_bounced_total"] == {(("status", "expired"),): 1}
    assert samples["meta1_smtps_rejected_total"] == {(("stage", "rcpt"), ("status", "5.1.1")): 1}
    buckets = samples["meta1_delivery_delay_seconds_bucket"]
    assert buckets[(("le", "0.1"),)] == 1
    assert buckets[(("le", "1"),)] == 2
    assert buckets[(("le", "5"),)] == 3
    assert buckets[(("le", "432000"),)] == 3
    assert buckets[(("le", "+Inf"),)] == 4
    assert samples["meta1_delivery_delay_seconds_count"] == {(): 4}
    assert samples["meta1_delivery_delay_seconds_sum"][()] == pytest.approx(1e9 + 3.75)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["meta1_messages_received"].type == "counter"
    assert families["meta1_delivery_delay_seconds"].type == "histogram"
    assert families["meta1_messages_received"].documentation == QMGR_RECEIVED.help


def test_an_unused_counter_is_zero_and_an_unused_labelled_one_has_no_samples() -> None:
    page = Exposition()
    page.family(QMGR_RECEIVED, [])
    page.family(SMTPS_REJECTED, [])
    samples = parsed(page.text())
    assert samples == {"meta1_messages_received_total": {(): 0}}


def test_label_values_are_escaped() -> None:
    page = Exposition()
    nasty = 'a"b\\c\nd'
    page.family(QMGR_DELIVERY_FAILURES, [((nasty,), 2)])
    assert parsed(page.text())["meta1_delivery_failures_total"] == {(("destination", nasty),): 2}


def test_numbers_are_written_as_the_format_wants_them() -> None:
    assert format_number(3) == "3"
    assert format_number(2.0) == "2"
    assert format_number(0.25) == "0.25"
    assert format_number(float("inf")) == "+Inf"
    assert format_number(float("-inf")) == "-Inf"
    assert format_number(float("nan")) == "NaN"


def test_the_catalogue_follows_prometheus_naming() -> None:
    for name, metric in CATALOGUE.items():
        assert name == metric.name and name.startswith("meta1_")
        assert name.endswith("_total") == (metric.type == "counter"), name
        assert bool(metric.buckets) == (metric.type == "histogram"), name
        assert "\n" not in metric.help
