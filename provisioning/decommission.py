"""``urbanedge provision decommission`` (and the first half of ``replace``): the device's
certificate is revoked, the new CRL is published where the IOC reloads it (the IOC then
refuses the device's batches), and the device's keys are wiped when it can be reached."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioning.errors import ProvisionError


@dataclass
class DecommissionPlan:
    device_id: str
    cert_serial: str  # hex
    ca_dir: Path
    passphrase: bytes | None
    crl_publish: list[Path] = field(default_factory=list)
    crl_days: int = 7
    node_port: str | None = None  # wipe a node over its USB serial line
    gateway_pki_dir: Path | None = None  # wipe a gateway's key (run on the gateway)
    gateway_config: Path | None = None  # stop its agent (pid file next to the config)
    reason: str = "cessationOfOperation"


@dataclass
class DecommissionResult:
    revoked_serial: str
    crl_number: int
    wiped: bool
    wipe_note: str = ""


def decommission(plan: DecommissionPlan, step: Callable[[str], Any]) -> DecommissionResult:
    from cryptography.hazmat.primitives import serialization

    from pki.castore import CaDir, parse_serial
    from pki.keys import write_public_file

    now = datetime.now(UTC)
    with step("step.revoke"):
        from pki.errors import ProfileError

        try:
            serial = parse_serial(plan.cert_serial)
        except ProfileError as exc:
            raise ProvisionError("bad_serial", str(exc)) from None
        ca = CaDir.open(plan.ca_dir)
        ca.unlock(plan.passphrase)
        entry = ca.index.find(serial)
        if entry is None:
            raise ProvisionError("unknown_certificate", f"{plan.cert_serial} was not issued by {plan.ca_dir}")
        ca.revoke(serial, plan.reason, now=now)
    with step("step.publish_crl"):
        crl = ca.make_crl(now=now, days=plan.crl_days)
        for path in plan.crl_publish:
            write_public_file(path, crl.public_bytes(serialization.Encoding.PEM))
    wiped, note = False, ""
    if plan.node_port is not None:
        with step("step.wipe"):
            from provisioning.node_link import NodeLink, NodeLinkError

            try:
                link = NodeLink.open(plan.node_port)
                try:
                    link.request("wipe")
                    wiped = True
                finally:
                    link.close()
            except NodeLinkError as exc:
                # Revocation already makes the device useless to the IOC: an unreachable node is
                # recorded, not a failure.
                note = f"not wiped ({exc.reason}): {exc.detail}"
    elif plan.gateway_pki_dir is not None:
        with step("step.wipe"):
            if plan.gateway_config is not None:
                _stop_agent(plan.gateway_config)
            for name in ("gateway.key", "gateway-chain.pem"):
                (plan.gateway_pki_dir / name).unlink(missing_ok=True)
            wiped = True
    return DecommissionResult(f"{serial:x}", ca.index.crl_number, wiped, note)


def _stop_agent(config: Path) -> None:
    pid_path = config.with_suffix(".pid")
    try:
        pid = int(pid_path.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pass
    pid_path.unlink(missing_ok=True)
