"""The IOC's MQTT side: subscribe, hand each message to the pipeline, acknowledge when settled.

paho-mqtt with ``manual_ack``: a QoS 1 message is acknowledged only after its records are
in the store (or it was rejected), so a receiver killed mid-batch gets the message again
from the broker. With MQTT v5 the data topics are subscribed as a *shared* subscription
(``$share/<group>/…``): several receivers split the load and, with one PostgreSQL store,
still keep every reading exactly once. Certificate announcements are retained and
subscribed without sharing, so every receiver learns every signer.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ioc.pipeline import DATA_CHANNELS, Pipeline
from ioc.store import StoreUnavailableError

log = logging.getLogger("urbanedge.ioc")


@dataclass(frozen=True)
class ReceiverSettings:
    host: str
    port: int
    prefix: str = "urbanedge/v1"
    group: str | None = "ioc"  # shared-subscription group; None = plain subscription
    client_id: str = ""
    protocol: int = 5  # 5, or 4 (3.1.1) for brokers without v5 (then no sharing)
    tls: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    session_expiry: int = 3600  # s the broker keeps our queue while we are away (v5)
    # Data channels subscribed: all by default; a SOC's receiver takes ("security",) only.
    channels: tuple[str, ...] = DATA_CHANNELS

    def __post_init__(self) -> None:
        unknown = sorted(set(self.channels) - set(DATA_CHANNELS))
        if unknown or not self.channels:
            raise ValueError(f"channels must be some of {', '.join(DATA_CHANNELS)}, got {list(self.channels)}")

    def data_filters(self) -> list[str]:
        plain = [f"{self.prefix}/+/+/{ch}" for ch in self.channels]
        if self.group and self.protocol == 5:
            return [f"$share/{self.group}/{f}" for f in plain]
        return plain

    @property
    def cert_filter(self) -> str:
        return f"{self.prefix}/+/+/cert"


def _channel(topic: str) -> str:
    return topic.rsplit("/", 1)[-1]


class Receiver:
    """Runs the pipeline on messages from one MQTT connection, on the calling thread."""

    def __init__(self, settings: ReceiverSettings, pipeline: Pipeline,
                 on_idle: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self._on_idle = on_idle
        # paho's network thread only queues; the pipeline (crypto, store) runs in run(),
        # so a slow store never stalls keepalives.
        self._inbox: queue.Queue[tuple[str, bytes, int, int]] = queue.Queue(maxsize=1000)
        self._subscribed = threading.Event()
        s = settings
        proto = mqtt.MQTTv5 if s.protocol == 5 else mqtt.MQTTv311
        kwargs: dict[str, Any] = {"protocol": proto, "manual_ack": True}
        if s.protocol != 5:
            kwargs["clean_session"] = not s.client_id
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id, **kwargs)
        if s.tls is not None:
            self.client.tls_set_context(s.tls)
        if s.username:
            self.client.username_pw_set(s.username, s.password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.reconnect_delay_set(1, 30)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("event=ioc_connect_failed reason=%s", reason)
            return
        s = self.settings
        log.info("event=ioc_connected host=%s port=%d protocol=%s shared=%s", s.host, s.port, s.protocol,
                 bool(s.group and s.protocol == 5))
        # Announcements first, so retained certificates arrive before the data they sign.
        client.subscribe([(s.cert_filter, 1)] + [(f, 1) for f in s.data_filters()])

    def _on_subscribe(self, *_: Any) -> None:
        self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.put((msg.topic, bytes(msg.payload), msg.mid, msg.qos))

    def connect(self) -> None:
        s = self.settings
        props = None
        if s.protocol == 5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = s.session_expiry if s.client_id else 0
        clean: Any = (not s.client_id) if s.protocol == 5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY
        self.client.connect(s.host, s.port, keepalive=s.keepalive, clean_start=clean, properties=props)
        self.client.loop_start()

    def wait_subscribed(self, timeout: float) -> bool:
        return self._subscribed.wait(timeout)

    def run(self, *, duration: float | None = None, stop: threading.Event | None = None) -> None:
        """Process messages until ``duration`` elapses or ``stop`` is set."""
        end = None if duration is None else time.monotonic() + duration
        while not (stop is not None and stop.is_set()):
            left = 0.2 if end is None else min(0.2, end - time.monotonic())
            if left <= 0:
                break
            try:
                topic, payload, mid, qos = self._inbox.get(timeout=left)
            except queue.Empty:
                self.pipeline.handle_idle()
                if self._on_idle is not None:
                    self._on_idle()
                continue
            self._handle(topic, payload, mid, qos, stop)

    def _handle(self, topic: str, payload: bytes, mid: int, qos: int, stop: threading.Event | None) -> None:
        delay = 0.5
        while True:
            try:
                self.pipeline.handle(_channel(topic), payload, where=topic, on_done=self._acker(mid, qos))
                return
            except StoreUnavailableError as exc:
                # Not acknowledged, so not lost: wait for the store and try the same message again.
                log.warning("event=ioc_store_unavailable retry_in=%.1f problem=%r", delay, str(exc))
                if stop is not None and stop.wait(delay):
                    return
                if stop is None:
                    time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _acker(self, mid: int, qos: int) -> Callable[[], None]:
        def ack() -> None:
            if qos > 0:
                self.client.ack(mid, qos)
        return ack

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
