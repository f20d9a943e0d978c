"""The agent's counters in the Prometheus text exposition format (version 0.0.4). Sans-IO.

Why not ``prometheus_client``'s registry: every figure already lives in the agent's own
objects (poller stats, the forwarder's counters, the outbox's ``stats()``); a registry would
keep a second copy to be synchronised. Here a scrape takes a :class:`Snapshot` of those
objects and renders it, so the numbers on the wire are exactly what ``urbanedge status``
shows, and the agent carries no extra dependency. The tests parse the output with
``prometheus_client.parser`` (a real Prometheus-format parser).

Counters for events other parts of the agent count themselves (rejected commands, crypto
failures, security events) go through :data:`counters`:
``counters.inc("commands_rejected", reason="replayed")``. Every name in :data:`COUNTER_HELP`
is exported from the start (at 0 when nothing has happened), so dashboards and alerts can be
written before the first incident.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

PREFIX = "urbanedge_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UPLINK_STATES = ("offline", "connecting", "online")
PRIORITIES = ("alarm", "event", "telemetry")

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

# Counters incremented elsewhere (commands, crypto, security events): name → HELP text.
# A name must be listed here to be incremented, so a typo fails loudly in a test instead of
# silently exporting a series no alert watches.
COUNTER_HELP: dict[str, str] = {
    "commands_rejected": "Commands refused (unsigned, wrong signer, expired, replayed, out of range...), by reason.",
    "commands_accepted": "Commands verified and accepted, by command.",
    "crypto_failures": "Signature, decryption or certificate checks that failed, by operation.",
    "security_events": "Security events published to the SOC topic, by kind.",
    "config_rollbacks": "Remote configurations rolled back, by reason.",
}


def escape_label_value(value: str) -> str:
    """Label values: backslash, double quote and newline escaped (exposition format 0.0.4)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 2**53:
        return str(int(v))
    return repr(float(v))


def parse_listen(value: str) -> tuple[str, int]:
    """``127.0.0.1:9464`` or ``[::1]:9464`` → (host, port). Raises ValueError."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"not host:port: {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"IPv6 addresses go in brackets, e.g. [::1]:9464: {value!r}")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"port is not a number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {value!r}")
    return host, port


Labels = Mapping[str, str]


@dataclass
class Family:
    """One metric family: HELP, TYPE and its samples (``suffix`` is ``_sum``/``_count``...)."""

    name: str
    type: str  # counter | gauge | summary | untyped
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"invalid metric name {self.name!r}")

    def add(self, value: float, suffix: str = "", **labels: str) -> Family:
        for k in labels:
            if not _LABEL.match(k) or k.startswith("__"):
                raise ValueError(f"invalid label name {k!r}")
        self.samples.append((suffix, dict(labels), float(value)))
        return self


def render(families: Iterable[Family]) -> str:
    out: list[str] = []
    for fam in families:
        out.append(f"# HELP {fam.name} {escape_help(fam.help)}")
        out.append(f"# TYPE {fam.name} {fam.type}")
        for suffix, labels, value in fam.samples:
            lab = ""
            if labels:
                lab = "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in sorted(labels.items())) + "}"
            out.append(f"{fam.name}{suffix}{lab} {format_value(value)}")
    return "\n".join(out) + "\n"


class Counters:
    """Labelled counters that other parts of the agent increment; thread-safe (the outbox and
    crypto work run in worker threads)."""

    def __init__(self, help_texts: Mapping[str, str] | None = None) -> None:
        self._help = dict(COUNTER_HELP if help_texts is None else help_texts)
        self._values: dict[str, dict[tuple[tuple[str, str], ...], float]] = {n: {} for n in self._help}
        self._lock = threading.Lock()

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        if name not in self._help:
            raise KeyError(f"unknown counter {name!r} (known: {', '.join(sorted(self._help))})")
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + amount

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values[name].get(tuple(sorted(labels.items())), 0.0)

    def families(self) -> list[Family]:
        with self._lock:
            snap = {n: dict(s) for n, s in self._values.items()}
        fams = []
        for name, series in snap.items():
            fam = Family(f"{PREFIX}{name}_total", "counter", self._help[name])
            if not series:
                fam.add(0)  # exported at 0 from the start: alerts can be written before the first event
            for key, v in sorted(series.items()):
                fam.add(v, **dict(key))
            fams.append(fam)
        return fams


# The process-wide counters (imported by the command and security code).
counters = Counters()


@dataclass(frozen=True)
class DeviceSample:
    device: str
    bus: str
    kind: str
    polls: int
    good: int
    errors: Mapping[str, int]
    busy_seconds: float
    online: bool | None
    last_poll: float | None
    cycles_skipped: int


@dataclass(frozen=True)
class OutboxSample:
    depth: Mapping[str, int]  # by priority name
    used_bytes: int
    file_bytes: int
    max_bytes: int
    oldest_ts: float | None
    evicted_by_prio: Mapping[str, int]
    dropped_total: int


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape shows, read from the agent's objects at one moment."""

    now: float
    started: float
    version: str
    gateway_id: str
    devices: Sequence[DeviceSample] = ()
    bus_utilisation: Mapping[str, float] = field(default_factory=dict)
    outbox: OutboxSample | None = None
    uplink_state: str | None = None
    uplink: Mapping[str, int] = field(default_factory=dict)  # UplinkStats counters
    queue_depth: int = 0
    records_written: int = 0
    update_release: str | None = None
    update_state: str | None = None


def agent_families(s: Snapshot) -> list[Family]:
    fams: list[Family] = []
    info = Family(f"{PREFIX}agent_info", "gauge", "The running agent (value is always 1).")
    info.add(1, version=s.version, gateway=s.gateway_id)
    fams.append(info)
    fams.append(Family(f"{PREFIX}agent_start_time_seconds", "gauge",
                       "When the agent started (Unix time).").add(s.started))

    polls = Family(f"{PREFIX}polls_total", "counter", "Poll cycles attempted per device (retries count).")
    good = Family(f"{PREFIX}polls_good_total", "counter", "Poll cycles that returned readings, per device.")
    errs = Family(f"{PREFIX}poll_errors_total", "counter", "Failed poll attempts per device, by reason.")
    lat = Family(f"{PREFIX}poll_duration_seconds", "summary",
                 "Time the bus was held for this device's polls (sum) over attempts (count).")
    online = Family(f"{PREFIX}device_online", "gauge", "1 when the device answers, 0 when offline (unknown: absent).")
    last = Family(f"{PREFIX}device_last_poll_timestamp_seconds", "gauge", "Last good poll (Unix time).")
    skipped = Family(f"{PREFIX}poll_cycles_skipped_total", "counter", "Poll cycles skipped because the bus overran.")
    for d in s.devices:
        lb = {"device": d.device, "bus": d.bus, "kind": d.kind}
        polls.add(d.polls, **lb)
        good.add(d.good, **lb)
        for reason, n in sorted(d.errors.items()):
            errs.add(n, device=d.device, bus=d.bus, reason=reason)
        lat.add(d.busy_seconds, "_sum", **lb)
        lat.add(d.polls, "_count", **lb)
        if d.online is not None:
            online.add(1 if d.online else 0, **lb)
        if d.last_poll is not None:
            last.add(d.last_poll, **lb)
        skipped.add(d.cycles_skipped, **lb)
    fams += [polls, good, errs, lat, online, last, skipped]
    util = Family(f"{PREFIX}bus_utilisation_ratio", "gauge", "Share of time each bus was busy since start.")
    for bus, u in sorted(s.bus_utilisation.items()):
        util.add(u, bus=bus)
    fams.append(util)

    fams.append(Family(f"{PREFIX}queue_depth", "gauge",
                       "Records waiting in memory for the outbox writer.").add(s.queue_depth))
    fams.append(Family(f"{PREFIX}records_written_total", "counter",
                       "Records the writer committed to the outbox.").add(s.records_written))
    if s.outbox is not None:
        o = s.outbox
        depth = Family(f"{PREFIX}outbox_depth", "gauge", "Records queued in the outbox, by priority.")
        ev = Family(f"{PREFIX}outbox_evictions_total", "counter",
                    "Records evicted to stay under the size limit, by priority.")
        for p in PRIORITIES:
            depth.add(o.depth.get(p, 0), priority=p)
            ev.add(o.evicted_by_prio.get(p, 0), priority=p)
        fams += [depth, ev]
        fams.append(Family(f"{PREFIX}outbox_used_bytes", "gauge",
                           "Bytes of live outbox pages (what the limit applies to).").add(o.used_bytes))
        fams.append(Family(f"{PREFIX}outbox_file_bytes", "gauge", "Outbox database plus WAL on disk.")
                    .add(o.file_bytes))
        fams.append(Family(f"{PREFIX}outbox_max_bytes", "gauge", "Configured outbox size limit.").add(o.max_bytes))
        age = 0.0 if o.oldest_ts is None else max(0.0, s.now - o.oldest_ts)
        fams.append(Family(f"{PREFIX}outbox_oldest_age_seconds", "gauge",
                           "Age of the oldest record not yet acknowledged (0 when empty).").add(age))
        fams.append(Family(f"{PREFIX}outbox_dropped_total", "counter",
                           "Records dropped because the disk was full.").add(o.dropped_total))
    if s.uplink_state is not None:
        st = Family(f"{PREFIX}uplink_state", "gauge", "1 for the uplink's current state, 0 for the others.")
        for name in UPLINK_STATES:
            st.add(1 if s.uplink_state == name else 0, state=name)
        fams.append(st)
    uplink_help = {
        "reconnects": "Connections to the broker after the first one.",
        "connects": "Connections made to the broker.",
        "connect_failures": "Connection attempts that failed.",
        "published_records": "Records published (before acknowledgement).",
        "acked_records": "Records acknowledged by the broker and deleted from the outbox.",
        "acked_messages": "MQTT messages acknowledged by the broker.",
        "dropped_bad_records": "Records dropped because they could not be sealed or encoded.",
    }
    for key, text in uplink_help.items():
        if key in s.uplink:
            fams.append(Family(f"{PREFIX}uplink_{key}_total", "counter", text).add(s.uplink[key]))
    if s.update_release is not None or s.update_state is not None:
        fams.append(Family(f"{PREFIX}update_info", "gauge",
                           "Software update status: running release and last OTA state (value 1).")
                    .add(1, release=s.update_release or "", state=s.update_state or ""))
    return fams


def render_agent(s: Snapshot, extra: Counters | None = None) -> str:
    """The whole ``/metrics`` page for one snapshot."""
    fams = agent_families(s)
    fams += (extra if extra is not None else counters).families()
    return render(fams)
