"""The IOC side of remote configuration and encrypted commands (docs/remote-config.md).

``urbanedge ioc command --encrypt-to GATEWAY_CERT ... config FILE [DEADLINE_S]`` reads the
gateway's full new ``agent.toml``, checks it as far as the IOC can (TOML syntax, every field
against the agent's models: the file paths it names exist only on the gateway, which checks
them), and encrypts the args to the gateway's seal certificate (:mod:`pki.sealed_args`).
Errors are :class:`ValueError` with a message for the operator (exit code 2).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.config import AgentConfig, _field_path
from agent.reconfig.trial import DEFAULT_DEADLINE, parse_args


def config_args(params: list[str]) -> dict[str, Any]:
    """``FILE [DEADLINE_S]`` -> ``{"toml": text, "deadline": s}``."""
    if len(params) > 2:
        raise ValueError("config takes FILE and optionally DEADLINE_S (seconds to prove the new config)")
    path = Path(params[0])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"config {path}: cannot read: {exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config {path}: invalid TOML: {exc}") from None
    try:
        AgentConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _field_path(tuple(err["loc"]))
        raise ValueError(f"config {path}: {where}: {err['msg']}") from None
    try:
        deadline = float(params[1]) if len(params) == 2 else DEFAULT_DEADLINE
    except ValueError:
        raise ValueError(f"config DEADLINE_S {params[1]!r} is not a number of seconds") from None
    args = {"toml": text, "deadline": deadline}
    parse_args(args)  # the gateway's own check of the args (deadline range)
    return args


def encrypt_args(args: Mapping[str, Any], cert_file: Path, gateway: str | None) -> dict[str, Any]:
    """``args`` encrypted to the gateway certificate in ``cert_file`` (first PEM certificate)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding

    from pki.chain import device_id_of
    from pki.errors import PkiError
    from pki.keys import load_cert
    from pki.sealed_args import seal_args

    try:
        cert = load_cert(cert_file)
    except (OSError, ValueError, PkiError) as exc:
        raise ValueError(f"--encrypt-to {cert_file}: {exc}") from None
    named = device_id_of(cert)
    if gateway is not None and named is not None and named != gateway:
        raise ValueError(f"--encrypt-to {cert_file} is the certificate of {named!r}, not of --gateway {gateway!r}")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"--encrypt-to {cert_file}: the gateway key is not P-256: it cannot receive encrypted args")
    try:
        return seal_args(args, key, cert.public_bytes(Encoding.DER))
    except ValueError as exc:
        raise ValueError(f"--encrypt-to {cert_file}: {exc}") from None
