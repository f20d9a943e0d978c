"""[pure] MQTT topic names of one gateway: ``<prefix>/<site>/<gateway>/<channel>``, and of
group commands: ``<prefix>/group/<group>/command`` (so ``group`` is not a usable site name).

Every segment is checked when the :class:`Topics` is built, so a gateway id or site
that would turn a topic into a wildcard (``+``/``#``) or shift its levels (``/``) is a
configuration error at start-up, not a silent misroute at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.buffer.records import Priority

MAX_SEGMENT = 64
CHANNELS: frozenset[str] = frozenset(
    {"telemetry", "alarm", "event", "security", "status", "birth", "cert", "command"}
)
GROUP_LEVEL = "group"  # the level where a site would be, in group command topics
_FORBIDDEN = frozenset("+#/\x00")
_BY_PRIORITY: dict[Priority, str] = {
    Priority.ALARM: "alarm",
    Priority.EVENT: "event",
    Priority.TELEMETRY: "telemetry",
}


class TopicError(ValueError):
    """A topic (or one of its segments) is not valid for urbanedge."""


def check_segment(value: str, what: str = "segment") -> str:
    """Return ``value`` if it can be one topic level; raise :class:`TopicError` otherwise."""
    if not value:
        raise TopicError(f"{what} must not be empty")
    if len(value) > MAX_SEGMENT:
        raise TopicError(f"{what} {value!r} is longer than {MAX_SEGMENT} characters")
    bad = _FORBIDDEN.intersection(value)
    if bad:
        raise TopicError(f"{what} {value!r} contains forbidden {''.join(sorted(bad))!r}")
    return value


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names of one gateway; ``prefix`` may span several levels (``urbanedge/v1``)."""

    prefix: str
    site: str
    gateway_id: str

    def __post_init__(self) -> None:
        for level in self.prefix.split("/"):
            check_segment(level, "prefix level")
        check_segment(self.site, "site")
        if self.site == GROUP_LEVEL:
            raise TopicError(f"site {GROUP_LEVEL!r} is reserved: <prefix>/{GROUP_LEVEL}/... are group command topics")
        check_segment(self.gateway_id, "gateway id")

    def channel(self, name: str) -> str:
        """The topic of channel ``name`` (one of :data:`CHANNELS`)."""
        if name not in CHANNELS:
            raise TopicError(f"unknown channel {name!r}")
        return f"{self.prefix}/{self.site}/{self.gateway_id}/{name}"

    @property
    def telemetry(self) -> str:
        return self.channel("telemetry")

    @property
    def alarm(self) -> str:
        return self.channel("alarm")

    @property
    def event(self) -> str:
        return self.channel("event")

    @property
    def security(self) -> str:
        return self.channel("security")

    @property
    def status(self) -> str:
        return self.channel("status")

    @property
    def birth(self) -> str:
        return self.channel("birth")

    @property
    def cert(self) -> str:
        return self.channel("cert")

    @property
    def command(self) -> str:
        return self.channel("command")

    def group_command(self, group: str) -> str:
        """The command topic of ``group``, shared by every gateway in it (under our prefix)."""
        return group_command_topic(self.prefix, group)

    def for_priority(self, prio: Priority) -> str:
        """Where records of priority ``prio`` are published."""
        return self.channel(_BY_PRIORITY[prio])

    def parse(self, topic: str) -> tuple[str, str, str]:
        """``(site, gateway, channel)`` of any gateway's topic under this prefix."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            raise TopicError(f"topic {topic!r} is not under {self.prefix!r}")
        parts = topic[len(head):].split("/")
        if len(parts) != 3:
            raise TopicError(f"topic {topic!r} is not <prefix>/<site>/<gateway>/<channel>")
        site, gateway, channel = parts
        check_segment(site, "site")
        check_segment(gateway, "gateway id")
        if channel not in CHANNELS:
            raise TopicError(f"topic {topic!r} has unknown channel {channel!r}")
        return site, gateway, channel


def group_command_topic(prefix: str, group: str) -> str:
    """``<prefix>/group/<group>/command``: every gateway in ``group`` subscribes to it."""
    for level in prefix.split("/"):
        check_segment(level, "prefix level")
    return f"{prefix}/{GROUP_LEVEL}/{check_segment(group, 'group')}/command"
