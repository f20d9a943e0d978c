"""[pure] Is a release on trial healthy? The three things a gateway exists to do, observed.

- the uplink connected (the broker accepted this code's TLS and MQTT),
- every bus with devices polled at least one device successfully (drivers and config work),
- the outbox drains: the broker acknowledged records sent by this code (sealing works and the
  IOC-bound path is intact), or there was nothing to send.

The updater samples the agent's own counters until all three hold or the deadline passes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HealthSample:
    uplink_online: bool
    acked_records: int  # acknowledged by the broker since this process started
    records_written: int  # produced by this process (telemetry, alarms, events)
    buses_polled: dict[str, int]  # bus name -> good polls since start (buses with devices)


@dataclass(frozen=True, slots=True)
class HealthVerdict:
    ok: bool
    missing: tuple[str, ...]  # what has not been seen yet, in words for the status report
    failed: tuple[str, ...] = ()  # the same as check names: "uplink", "buses", "outbox"

    @property
    def reason(self) -> str:
        return "; ".join(self.missing)


def evaluate(sample: HealthSample) -> HealthVerdict:
    missing, failed = [], []
    if not sample.uplink_online and sample.acked_records == 0:
        missing.append("uplink never connected")
        failed.append("uplink")
    idle = [b for b, good in sorted(sample.buses_polled.items()) if good == 0]
    if idle:
        missing.append("no successful poll on bus " + ", ".join(idle))
        failed.append("buses")
    if sample.acked_records == 0 and sample.records_written > 0:
        missing.append("outbox not draining (no record acknowledged)")
        failed.append("outbox")
    return HealthVerdict(not missing, tuple(missing), tuple(failed))
