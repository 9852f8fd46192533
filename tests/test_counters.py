"""The metric objects (SPEC §9): names, label values from start-up, per-batch helpers, no Flask."""

from __future__ import annotations

import datetime
import subprocess
import sys

import pytest
from prometheus_client import REGISTRY
from prometheus_client import generate_latest

from streamapp import catalog
from streamapp import counters
from streamapp import framing

#: SPEC §9's metrics, by their exposed names.
SPEC_METRICS = {
    "streamapp_open_streams": "gauge",
    "streamapp_streams_opened": "counter",
    "streamapp_streams_refused": "counter",
    "streamapp_stream_seconds": "histogram",
    "streamapp_time_to_first_event_seconds": "histogram",
    "streamapp_commit_to_send_seconds": "histogram",
    "streamapp_events_sent": "counter",
    "streamapp_chunks_dropped": "counter",
    "streamapp_slow_client_disconnects": "counter",
    "streamapp_listener_reconnects": "counter",
    "streamapp_appends": "counter",
    "streamapp_notification_queue_usage": "gauge",
}


def _sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def _frame(ts: str) -> bytes:
    envelope = f'{{"id":7,"type":"workflow_status","ts":"{ts}","exec_id":"e","kind":"workflow","data":{{}}}}'
    return framing.stored_event_frame(7, "workflow_status", envelope)


def test_spec_metrics_exist_with_their_types():
    families = {metric.name: metric.type for metric in REGISTRY.collect()}
    for name, kind in SPEC_METRICS.items():
        assert families.get(name) == kind, name


@pytest.mark.parametrize(
    ("metric", "label", "values"),
    [
        ("streamapp_open_streams", "kind", (*catalog.KINDS, "multiplex")),
        ("streamapp_streams_opened_total", "kind", (*catalog.KINDS, "multiplex")),
        ("streamapp_streams_refused_total", "reason", ("user_limit", "worker_limit", "shutdown", "unavailable")),
        ("streamapp_events_sent_total", "type", (*catalog.CATALOG, "other")),
    ],
)
def test_every_named_label_value_is_exported_from_import(metric, label, values):
    text = generate_latest(REGISTRY).decode()
    for value in values:
        assert f'{metric}{{{label}="{value}"}}' in text, value


def test_types_outside_the_catalog_count_as_other():
    before = _sample("streamapp_events_sent_total", type="other") or 0
    status = _sample("streamapp_events_sent_total", type="workflow_status") or 0
    counters.events_sent({"my_own_type": 3, "another": 2, "workflow_status": 1})
    assert _sample("streamapp_events_sent_total", type="other") == before + 5
    assert _sample("streamapp_events_sent_total", type="workflow_status") == status + 1
    assert _sample("streamapp_events_sent_total", type="my_own_type") is None


def test_commit_to_send_reads_the_frames_ts():
    count = _sample("streamapp_commit_to_send_seconds_count") or 0
    fast = _sample("streamapp_commit_to_send_seconds_bucket", le="10.0") or 0
    stamp = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=30)
    counters.commit_to_send(_frame(stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")))
    assert _sample("streamapp_commit_to_send_seconds_count") == count + 1
    # Thirty seconds old: past every bucket but +Inf.
    assert _sample("streamapp_commit_to_send_seconds_bucket", le="10.0") == fast


@pytest.mark.parametrize(
    "frame",
    [framing.event_frame(None, "llm_chunk", "text, no ts"), _frame("not a time"), b"id: 1\ndata: {}\n\n"],
)
def test_frames_without_a_readable_ts_are_not_observed(frame):
    count = _sample("streamapp_commit_to_send_seconds_count")
    counters.commit_to_send(frame)
    assert _sample("streamapp_commit_to_send_seconds_count") == count


def test_a_stream_counts_open_then_closed_with_its_duration():
    open_before = _sample("streamapp_open_streams", kind="agent")
    opened = _sample("streamapp_streams_opened_total", kind="agent")
    durations = _sample("streamapp_stream_seconds_count")
    counters.stream_opened("agent")
    assert _sample("streamapp_open_streams", kind="agent") == open_before + 1
    counters.stream_closed("agent", 2.5)
    assert _sample("streamapp_open_streams", kind="agent") == open_before
    assert _sample("streamapp_streams_opened_total", kind="agent") == opened + 1
    assert _sample("streamapp_stream_seconds_count") == durations + 1


@pytest.mark.parametrize("module", ["counters", "subscriber", "hub", "producer"])
def test_counting_modules_import_no_flask(module):
    """Issue 14: the hub and the subscriber count without importing the http layer."""
    code = f"import sys, streamapp.{module}; print(sorted(m for m in ('flask', 'werkzeug') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
