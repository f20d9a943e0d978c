"""The TLS client context of the uplink: TLS 1.2 or newer, broker hostname checked,
optional client certificate (mutual TLS).

Files are opened here, at start-up, so a missing or unreadable CA, certificate or key
is reported once with its path instead of as a handshake failure on every reconnect.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Protocol


class TlsConfigError(Exception):
    """A TLS file cannot be used. ``str()`` names the file and the problem."""

    def __init__(self, path: Path | None, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class TlsSettings(Protocol):
    """What :func:`context_from_settings` reads (``agent.config.Broker`` has these fields)."""

    @property
    def tls(self) -> bool: ...
    @property
    def ca_file(self) -> Path | None: ...
    @property
    def cert_file(self) -> Path | None: ...
    @property
    def key_file(self) -> Path | None: ...


def _check_readable(path: Path, what: str) -> None:
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except FileNotFoundError as exc:
        raise TlsConfigError(path, f"{what} not found") from exc
    except IsADirectoryError as exc:
        raise TlsConfigError(path, f"{what} is a directory, not a file") from exc
    except OSError as exc:
        raise TlsConfigError(path, f"cannot read {what}: {exc.strerror or exc}") from exc


def client_context(
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> ssl.SSLContext:
    """A client context trusting ``ca_file`` (the system CAs when ``None``)."""
    if (cert_file is None) != (key_file is None):
        raise TlsConfigError(cert_file or key_file, "cert_file and key_file go together")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # create_default_context already sets both; stated so a refactor cannot drop them.
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if ca_file is not None:
        _check_readable(ca_file, "CA file")
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except ssl.SSLError as exc:
            raise TlsConfigError(ca_file, f"not a PEM CA certificate: {exc.reason}") from exc
    if cert_file is not None and key_file is not None:
        _check_readable(cert_file, "certificate file")
        _check_readable(key_file, "key file")
        try:
            ctx.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
        except ssl.SSLError as exc:
            raise TlsConfigError(
                cert_file, f"certificate/key unusable or not a pair ({key_file}): {exc.reason}"
            ) from exc
    return ctx


def context_from_settings(settings: TlsSettings) -> ssl.SSLContext | None:
    """The context for the broker settings, or ``None`` when TLS is off."""
    if not settings.tls:
        return None
    return client_context(settings.ca_file, settings.cert_file, settings.key_file)
