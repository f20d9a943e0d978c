"""Agent configuration: TOML validated by pydantic models.

``load_config`` is the only way in. Any problem — unreadable file, TOML syntax, a field of
the wrong type, an unknown profile, a device id used twice — raises :class:`ConfigError`
naming the file, the field (dotted path, e.g. ``buses[1].devices[0].unit``) and the problem.
The JSON schema in ``config/schemas/agent-config.schema.json`` is exported from these models.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from drivers.errors import ProfileError
from drivers.profiles import Profile, load_profiles

Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


def _check_listen(v: str) -> str:
    from agent.ops.metrics import parse_listen

    parse_listen(v)  # ValueError names the problem: reported as <section>.listen
    return v


# "HOST:PORT" a local server binds to (metrics, web page).
Listen = Annotated[str, AfterValidator(_check_listen)]
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)[iI]?[bB]?\s*$")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class ConfigError(Exception):
    """A configuration file that cannot be used. ``str()`` is the message for the user."""

    def __init__(self, file: str, field: str, problem: str) -> None:
        self.file, self.field, self.problem = file, field, problem
        super().__init__(f"{file}: {field}: {problem}")


def parse_size(value: int | str) -> int:
    """``300MB``, ``64 MiB``, ``512k`` or a plain byte count → bytes."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"not a size: {value!r} (use e.g. 300MB, 64MiB or a byte count)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Identity(_Model):
    """Who this gateway is, for topics and (later) its certificate subject."""

    gateway_id: Ident
    site: Ident
    province: str = ""


class Broker(_Model):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    client_id: Ident | None = None
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = None
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")] = "urbanedge/v1"
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = 16
    batch_max_records: Annotated[int, Field(ge=1, le=10_000)] = 200
    batch_max_bytes: Annotated[int, Field(ge=1024, le=256 * 1024 * 1024)] = 64_000
    reconnect_min: Annotated[float, Field(gt=0)] = 0.5
    reconnect_max: Annotated[float, Field(gt=0)] = 60.0

    @model_validator(mode="after")
    def _tls_files(self) -> Broker:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        if not self.tls and (self.ca_file or self.cert_file):
            raise ValueError("ca_file/cert_file/key_file need tls = true")
        return self


class Seal(_Model):
    """What the gateway seals every batch with (see docs/wire-format.md, "Sealed envelope").

    The files are checked when the agent starts (``urbanedge run``), not by ``config check``,
    so a config can be checked on a laptop before the gateway has its certificate."""

    key: Path = Path("/etc/urbanedge/pki/gateway.key")
    cert: Path = Path("/etc/urbanedge/pki/gateway-chain.pem")
    recipient: Path = Path("/etc/urbanedge/pki/ioc-recipient.pem")
    key_passphrase_file: Path | None = None


class Update(_Model):
    """Signed software updates (docs/ota.md). Off unless ``enabled``; needs ``urbanedge launch``.

    ``root`` is the TUF root metadata the gateway was provisioned with: the only thing trusted;
    everything fetched from ``repository`` is checked against it."""

    enabled: bool = False
    repository: Annotated[str, Field(pattern=r"^https?://")] = "http://127.0.0.1:8000/"
    root: Path = Path("/etc/urbanedge/update/root.json")
    state_dir: Path = Path("/var/lib/urbanedge/update")
    slots: Path = Path("/var/lib/urbanedge/slots")
    hardware: Ident = "gateway-linux"
    check_interval: Annotated[float, Field(ge=10, le=7 * 86_400)] = 6 * 3600.0
    health_deadline: Annotated[float, Field(ge=5, le=3600)] = 300.0
    max_tries: Annotated[int, Field(ge=1, le=10)] = 3
    # The CycloneDX SBOM of what runs, sealed to the IOC at every start (docs/ota.md).
    # Unset: reported when updates are enabled.
    report_sbom: bool | None = None

    @property
    def sbom(self) -> bool:
        return self.enabled if self.report_sbom is None else self.report_sbom


class Commands(_Model):
    """Signed commands from the IOC (docs/operations.md, "Commands"). Off unless ``enabled``.

    ``root`` is the provincial root the IOC command certificate must chain to; ``groups``
    the group names this gateway obeys group commands for. A command is taken at most once:
    its id is kept in ``state`` (default: ``commands.db`` next to the outbox) for
    ``replay_window`` seconds, and older commands are refused. ``crl``: CRL files (PEM/DER)
    the IOC command certificate is checked against, re-read when they change; a command is
    refused while one was never readable, or is past its nextUpdate by more than ``crl_grace``
    seconds (agent/control/revocation.py)."""

    enabled: bool = False
    root: Path = Path("/etc/urbanedge/pki/root.pem")
    groups: list[Ident] = Field(default_factory=list)
    crl: list[Path] = Field(default_factory=list)
    crl_grace: Annotated[float, Field(ge=0, le=365 * 86_400)] = 7 * 86_400.0
    replay_window: Annotated[float, Field(ge=60, le=30 * 86_400)] = 3600.0
    max_skew: Annotated[float, Field(ge=0, le=3600)] = 30.0
    ioc_id: Ident = "ioc-command"
    state: Path | None = None
    queue: Annotated[int, Field(ge=1, le=1000)] = 32
    # The ``reboot`` command runs this (argv, no shell), e.g. ["systemctl", "reboot"]; unset,
    # ``reboot`` is refused as ``unsupported``. Thresholds set by the ``threshold`` command are
    # kept in ``thresholds.json`` next to ``state``.
    reboot_command: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None


class Buffer(_Model):
    path: Path = Path("/var/lib/urbanedge/outbox.db")
    max_bytes: Annotated[int, Field(ge=256 * 1024)] = 300 * 1024 * 1024
    durability: Literal["full", "normal"] = "full"
    queue_records: Annotated[int, Field(ge=1, le=100_000)] = 2000

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return parse_size(v) if isinstance(v, str) else v


class Device(_Model):
    id: Ident
    profile: str
    unit: Annotated[int, Field(ge=0, le=247)] = 1
    interval: Annotated[float, Field(ge=0.1, le=86_400)] = 60.0
    enabled: bool = True
    # Per-device overrides of the profile's alarm thresholds, by rule name.
    alarms: dict[str, float] = Field(default_factory=dict)
    # Consecutive failed polls before the device is reported offline.
    offline_after: Annotated[int, Field(ge=1, le=100)] = 3


class _BusBase(_Model):
    name: Ident
    timeout: Annotated[float, Field(gt=0, le=60)] = 1.0
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    backoff_max: Annotated[float, Field(gt=0, le=3600)] = 300.0
    devices: list[Device] = Field(default_factory=list)


class ModbusTcpBus(_BusBase):
    type: Literal["modbus-tcp"]
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 502


class _SerialLine(_Model):
    port: str
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


class ModbusRtuBus(_BusBase, _SerialLine):
    type: Literal["modbus-rtu"]


class SerialLineBus(_BusBase, _SerialLine):
    type: Literal["serial-line"]
    # A reading older than this many poll intervals is reported stale.
    stale_after: Annotated[float, Field(ge=1)] = 3.0


Bus = Annotated[ModbusTcpBus | ModbusRtuBus | SerialLineBus, Field(discriminator="type")]


class Metrics(_Model):
    """Prometheus ``/metrics`` endpoint (docs/operations.md, "Metrics"). Off unless ``listen``
    is set: it is unauthenticated and names every device, so it is bound only to the address
    given here — the gateway's service interface (e.g. ``127.0.0.1:9464`` or the VPN address)."""

    listen: Listen | None = None


class LightingAmbient(_Model):
    """Photocell rule: lamps on below ``on_below`` lux, off above ``off_above`` (hysteresis);
    a change must hold ``dwell`` seconds. ``level``: % when dark in an "off" schedule step."""

    on_below: Annotated[float, Field(ge=0)] = 30.0
    off_above: Annotated[float, Field(ge=0)] = 80.0
    dwell: Annotated[float, Field(ge=0, le=3600)] = 120.0
    level: Annotated[int, Field(ge=0, le=100)] = 100

    @model_validator(mode="after")
    def _band(self) -> LightingAmbient:
        if self.on_below >= self.off_above:
            raise ValueError(f"on_below ({self.on_below:g}) must be below off_above ({self.off_above:g})")
        return self


class LightingTraffic(_Model):
    """Traffic rule: more than ``above`` counted in the last minute -> ``boost`` % for ``hold`` s."""

    above: Annotated[float, Field(ge=0)] = 10.0
    boost: Annotated[int, Field(ge=0, le=100)] = 100
    hold: Annotated[float, Field(ge=0, le=86_400)] = 120.0


class Lighting(_Model):
    """Local streetlight control (docs/lighting.md). Off unless ``enabled``; runs with or
    without the uplink. ``schedule`` steps are ``"HH:MM=LEVEL"`` (0-100) or ``"HH:MM=off"`` in
    local time (``utc_offset``); a signed ``schedule`` command replaces them, kept in ``state``
    (default: ``lighting.json`` next to the outbox). ``devices``: default every device whose
    profile has ``dim_level``."""

    enabled: bool = False
    utc_offset: Annotated[str, Field(pattern=r"^[+-]([01][0-9]|2[0-3]):[0-5][0-9]$")] = "+07:00"
    schedule: list[str] = Field(default_factory=lambda: ["18:00=100", "23:00=50", "05:30=off"])
    period: Annotated[float, Field(ge=0.2, le=300)] = 5.0
    devices: list[Ident] = Field(default_factory=list)
    ambient: LightingAmbient | None = None
    traffic: LightingTraffic | None = None
    state: Path | None = None

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: list[str]) -> list[str]:
        from agent.control.lighting import Schedule

        Schedule.parse(v)  # LightingError is a ValueError: reported as lighting.schedule
        return v


class Web(_Model):
    """The local web page for technicians (docs/operations.md, "Local web page"). Off unless
    ``listen`` is set. ``listen`` is an IP address of the service interface (the maintenance
    Ethernet port, say); the wildcard addresses (0.0.0.0, ::) are refused unless
    ``allow_wildcard`` — the page would then answer on the uplink too. Users and their salted
    hashes are in ``passwords`` (mode 0600; set with ``urbanedge web passwd``). With
    ``tls_cert``/``tls_key`` the page is served over HTTPS and its cookies are ``Secure``."""

    listen: Listen | None = None
    allow_wildcard: bool = False
    passwords: Path = Path("/etc/urbanedge/web-passwords")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Extra names the page may be reached by (the Host header is checked: DNS rebinding).
    hostnames: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]{1,253}$")]] = Field(default_factory=list)
    session_ttl: Annotated[float, Field(ge=300, le=7 * 86_400)] = 8 * 3600.0
    idle_timeout: Annotated[float, Field(ge=60, le=86_400)] = 1800.0
    history: Annotated[int, Field(ge=2, le=1000)] = 60
    refresh: Annotated[float, Field(ge=0, le=3600)] = 10.0
    default_lang: Literal["vi", "en"] = "vi"

    @model_validator(mode="after")
    def _tls_pair(self) -> Web:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self


class AgentConfig(_Model):
    identity: Identity
    broker: Broker = Field(default_factory=Broker)
    buffer: Buffer = Field(default_factory=Buffer)
    seal: Seal = Field(default_factory=Seal)
    update: Update = Field(default_factory=Update)
    commands: Commands = Field(default_factory=Commands)
    metrics: Metrics = Field(default_factory=Metrics)
    web: Web = Field(default_factory=Web)
    lighting: Lighting = Field(default_factory=Lighting)
    buses: list[Bus] = Field(default_factory=list)
    profile_dirs: list[Path] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["kv", "json"] = "kv"


class LoadedConfig:
    """A validated config with its profiles resolved and relative paths made absolute."""

    def __init__(self, path: Path, config: AgentConfig, profiles: dict[str, Profile]) -> None:
        self.path = path
        self.config = config
        self.profiles = profiles

    def devices(self) -> list[tuple[Bus, Device, Profile]]:
        return [
            (bus, dev, self.profiles[dev.profile])
            for bus in self.config.buses
            for dev in bus.devices
            if dev.enabled
        ]


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("modbus-tcp", "modbus-rtu", "serial-line"):
            continue  # the discriminator tag pydantic inserts for union members
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _resolve(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else (base / p).resolve()


def load_config(path: Path) -> LoadedConfig:
    """Read, validate and resolve a config file. Raises :class:`ConfigError`."""
    name = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(name, "(file)", "no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(name, "(file)", f"cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, "(syntax)", f"invalid TOML: {exc}") from exc
    try:
        cfg = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        problem = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] in ("missing", "extra_forbidden"):
            problem = {"missing": "required field is missing",
                       "extra_forbidden": "unknown field"}[err["type"]]
        raise ConfigError(name, _field_path(tuple(err["loc"])), problem) from exc
    return _check_semantics(path, cfg)


def _check_semantics(path: Path, cfg: AgentConfig) -> LoadedConfig:
    name, base = str(path), path.parent
    updates: dict[str, Any] = {
        "buffer": cfg.buffer.model_copy(update={"path": _resolve(base, cfg.buffer.path)}),
        "profile_dirs": [_resolve(base, d) for d in cfg.profile_dirs],
    }
    b = cfg.broker
    updates["broker"] = b.model_copy(update={
        k: _resolve(base, getattr(b, k)) for k in ("ca_file", "cert_file", "key_file")
        if getattr(b, k) is not None
    })
    sl = cfg.seal
    updates["seal"] = sl.model_copy(update={
        k: _resolve(base, getattr(sl, k)) for k in ("key", "cert", "recipient", "key_passphrase_file")
        if getattr(sl, k) is not None
    })
    up = cfg.update
    updates["update"] = up.model_copy(
        update={k: _resolve(base, getattr(up, k)) for k in ("root", "state_dir", "slots")})
    cm = cfg.commands
    updates["commands"] = cm.model_copy(update={
        "root": _resolve(base, cm.root),
        "crl": [_resolve(base, c) for c in cm.crl],
        "state": _resolve(base, cm.state) if cm.state is not None
        else updates["buffer"].path.with_name("commands.db")})
    wb = cfg.web
    updates["web"] = wb.model_copy(update={
        k: _resolve(base, getattr(wb, k)) for k in ("passwords", "tls_cert", "tls_key") if getattr(wb, k) is not None})
    lt = cfg.lighting
    updates["lighting"] = lt.model_copy(update={
        "state": _resolve(base, lt.state) if lt.state is not None
        else updates["buffer"].path.with_name("lighting.json")})
    cfg = cfg.model_copy(update=updates)
    if cfg.commands.enabled and not cfg.commands.root.is_file():
        raise ConfigError(name, "commands.root", f"no such file: {cfg.commands.root}")
    for i, crl in enumerate(cfg.commands.crl if cfg.commands.enabled else []):
        if not crl.is_file():
            raise ConfigError(name, f"commands.crl[{i}]", f"no such file: {crl}")
    if cfg.update.enabled:
        try:
            root = json.loads(cfg.update.root.read_bytes())
        except FileNotFoundError:
            raise ConfigError(name, "update.root", f"no such file: {cfg.update.root}") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(name, "update.root", f"not TUF root metadata (JSON): {exc}") from None
        if not isinstance(root, dict) or not isinstance(root.get("signed"), dict) \
                or root["signed"].get("_type") != "root":
            raise ConfigError(name, "update.root", f"{cfg.update.root} is not TUF root metadata")
    for i, d in enumerate(cfg.profile_dirs):
        if not d.is_dir():
            raise ConfigError(name, f"profile_dirs[{i}]", f"not a directory: {d}")
    try:
        profiles = load_profiles(cfg.profile_dirs)
    except ProfileError as exc:
        raise ConfigError(name, "profile_dirs", f"bad profile: {exc}") from exc
    for k in ("ca_file", "cert_file", "key_file"):
        f = getattr(cfg.broker, k)
        if f is not None and not f.is_file():
            raise ConfigError(name, f"broker.{k}", f"no such file: {f}")
    _check_buses(name, cfg, profiles)
    _check_web(name, cfg.web)
    _check_lighting(name, cfg, profiles)
    return LoadedConfig(path, cfg, profiles)


def _check_buses(name: str, cfg: AgentConfig, profiles: dict[str, Profile]) -> None:
    seen_dev: dict[str, str] = {}
    seen_bus: set[str] = set()
    for bi, bus in enumerate(cfg.buses):
        where = f"buses[{bi}]"
        if bus.name in seen_bus:
            raise ConfigError(name, f"{where}.name", f"bus name {bus.name!r} used twice")
        seen_bus.add(bus.name)
        units: set[int] = set()
        for di, dev in enumerate(bus.devices):
            at = f"{where}.devices[{di}]"
            if dev.id in seen_dev:
                raise ConfigError(name, f"{at}.id",
                                  f"device id {dev.id!r} already used at {seen_dev[dev.id]}")
            seen_dev[dev.id] = at
            prof = profiles.get(dev.profile)
            if prof is None:
                raise ConfigError(name, f"{at}.profile",
                                  f"unknown profile {dev.profile!r} (known: {', '.join(sorted(profiles))})")
            wants_line = bus.type == "serial-line"
            if wants_line != (prof.protocol == "line"):
                raise ConfigError(name, f"{at}.profile",
                                  f"profile {dev.profile!r} speaks {prof.protocol}, "
                                  f"but bus {bus.name!r} is {bus.type}")
            if wants_line and len(bus.devices) > 1:
                raise ConfigError(name, f"{where}.devices",
                                  "a serial-line bus carries exactly one sensor")
            if not wants_line:
                if dev.unit in units:
                    raise ConfigError(name, f"{at}.unit", f"unit {dev.unit} used twice on this bus")
                units.add(dev.unit)
            rules = {r.name for r in prof.alarms}
            for rule in dev.alarms:
                if rule not in rules:
                    raise ConfigError(name, f"{at}.alarms.{rule}",
                                      f"profile {dev.profile!r} has no alarm rule {rule!r} "
                                      f"(has: {', '.join(sorted(rules)) or 'none'})")


def _check_lighting(name: str, cfg: AgentConfig, profiles: dict[str, Profile]) -> None:
    known = {dev.id: profiles[dev.profile] for bus in cfg.buses for dev in bus.devices}
    for i, dev_id in enumerate(cfg.lighting.devices):
        prof = known.get(dev_id)
        if prof is None:
            raise ConfigError(name, f"lighting.devices[{i}]", f"no device {dev_id!r} in buses")
        if not any(p.name == "dim_level" and p.writable for p in prof.points):
            raise ConfigError(name, f"lighting.devices[{i}]",
                              f"{dev_id!r} (profile {prof.name!r}) has no writable dim_level")


def _check_web(name: str, web: Web) -> None:
    if web.listen is None:
        return
    import ipaddress

    from agent.ops.metrics import parse_listen
    from agent.web.passwords import mode_problem

    host, _ = parse_listen(web.listen)
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(name, "web.listen", f"{host!r} is not an IP address: give the service interface's "
                                              "address, e.g. 192.168.7.1:8080") from None
    if addr.is_unspecified and not web.allow_wildcard:
        raise ConfigError(name, "web.listen", f"{host} listens on every interface, the uplink included; give the "
                                              "service interface's address (or set web.allow_wildcard = true)")
    problem = mode_problem(web.passwords)
    if problem is not None:
        raise ConfigError(name, "web.passwords", problem)
    for k in ("tls_cert", "tls_key"):
        f = getattr(web, k)
        if f is not None and not f.is_file():
            raise ConfigError(name, f"web.{k}", f"no such file: {f}")


def json_schema() -> dict[str, Any]:
    """The JSON schema of the agent config (exported to config/schemas/)."""
    return AgentConfig.model_json_schema()
