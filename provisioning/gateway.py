"""``urbanedge provision gateway``: run on the gateway itself, blank to trusted.

Key made here (0600, never copied), request certified (EST token or offline), chain and IOC
recipient installed, the agent's configuration written from the site template, checked,
the agent started, and the IOC's signed receipt of its first verified batch awaited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provisioning.enrol import Enroller
from provisioning.errors import ProvisionError
from provisioning.node import fingerprint
from provisioning.receipt_watch import Watch
from provisioning.state import ResumeState

PEM = serialization.Encoding.PEM

# Sections a site template may hold; identity, broker and seal come from the provisioning.
TEMPLATE_SECTIONS = {"buses", "buffer", "profile_dirs", "log_level", "log_format"}


@dataclass
class GatewayPlan:
    gateway_id: str
    serial: str
    site: str
    province: str
    config_path: Path
    pki_dir: Path
    template: Path
    enroller: Enroller
    ioc_cert: Path
    broker_host: str
    broker_port: int
    state_dir: Path
    technician: str = ""
    broker_ca: Path | None = None
    prefix: str = "urbanedge/v1"
    buffer_path: Path | None = None
    start_agent: bool = True
    watch: Watch | None = None
    force: bool = False
    # Signed updates (docs/ota.md): the release repository and its root metadata, the only
    # trust the gateway will ever need for updates; copied next to the config.
    update_url: str | None = None
    update_root: Path | None = None


@dataclass
class GatewayResult:
    cert: x509.Certificate
    pid: int | None
    receipt: Any = None


def _q(text: str | Path) -> str:
    return json.dumps(str(text), ensure_ascii=False)  # a TOML basic string


def render_config(plan: GatewayPlan, key: Path, chain: Path, recipient: Path) -> str:
    try:
        template = tomllib.loads(plan.template.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProvisionError("template_invalid", f"{plan.template}: {exc}") from None
    extra = set(template) - TEMPLATE_SECTIONS
    if extra:
        raise ProvisionError("template_invalid", f"{plan.template}: sections {sorted(extra)} are set by "
                             "provisioning, not by the site template")
    if not template.get("buses"):
        raise ProvisionError("template_invalid", f"{plan.template}: no [[buses]]")
    buffer = plan.buffer_path or plan.config_path.parent / "outbox.db"
    tls = ""
    if plan.broker_ca is not None:
        tls = (f"tls = true\nca_file = {_q(plan.broker_ca)}\ncert_file = {_q(chain)}\nkey_file = {_q(key)}\n")
    head = (
        "# Written by `urbanedge provision gateway` "
        f"({time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, technician {plan.technician or '-'}).\n"
        "# Site part from the template " + str(plan.template) + "; re-run provisioning to change identity or keys.\n"
        f"[identity]\ngateway_id = {_q(plan.gateway_id)}\nsite = {_q(plan.site)}\nprovince = {_q(plan.province)}\n\n"
        f"[broker]\nhost = {_q(plan.broker_host)}\nport = {plan.broker_port}\ntopic_prefix = {_q(plan.prefix)}\n{tls}\n"
        f"[seal]\nkey = {_q(key)}\ncert = {_q(chain)}\nrecipient = {_q(recipient)}\n\n"
    )
    body = plan.template.read_text(encoding="utf-8")
    if "buffer" not in template:
        head += f"[buffer]\npath = {_q(buffer)}\n\n"
    if plan.update_url is not None:
        state = plan.config_path.parent / "update"
        head += (f"[update]\nenabled = true\nrepository = {_q(plan.update_url)}\n"
                 f"root = {_q(update_root_path(plan))}\nstate_dir = {_q(state)}\nslots = {_q(state / 'slots')}\n\n")
    return head + body


def update_root_path(plan: GatewayPlan) -> Path:
    return plan.config_path.parent / "update-root.json"


def _same_key(cert: x509.Certificate, key: Any) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(cert.public_key().public_bytes(serialization.Encoding.DER, spki)
                == key.public_key().public_bytes(serialization.Encoding.DER, spki))


def provision_gateway(plan: GatewayPlan, step: Callable[[str], Any]) -> GatewayResult:
    from pki.certs import make_csr
    from pki.keys import generate_key, load_cert, load_private_key, save_private_key, write_public_file
    from pki.profiles import SubjectFields
    from pki.request import make_private_dir

    state = ResumeState(plan.state_dir, plan.gateway_id)
    key_path = plan.pki_dir / "gateway.key"
    chain_path = plan.pki_dir / "gateway-chain.pem"
    recipient_path = plan.pki_dir / "ioc-recipient.pem"
    with step("step.gateway_key"):
        make_private_dir(plan.pki_dir)
        if key_path.exists():
            key = load_private_key(key_path)
            if chain_path.exists() and not plan.force and state.get("cert_sha256") is None:
                installed = load_cert(chain_path)
                if _same_key(installed, key):
                    raise ProvisionError("already_provisioned",
                                         f"{plan.gateway_id}: {chain_path} already certifies this gateway's key")
        else:
            key = generate_key("p256")
            save_private_key(key, key_path, None)
        csr = make_csr(key, SubjectFields(plan.gateway_id, plan.province, site=plan.site, serial=plan.serial))  # type: ignore[arg-type]
        csr_der = csr.public_bytes(serialization.Encoding.DER)
    with step("step.enrol"):
        saved = state.get("cert_pem")
        cert = x509.load_pem_x509_certificate(saved.encode()) if saved else None
        if cert is not None and _same_key(cert, key):
            chain = [x509.load_pem_x509_certificate(p.encode()) for p in state.get("chain_pem") or []]
        else:
            cert, chain = plan.enroller.certify(csr_der, plan.gateway_id)
            state.put(cert_pem=cert.public_bytes(PEM).decode(), chain_pem=[c.public_bytes(PEM).decode() for c in chain],
                      cert_sha256=fingerprint(cert))
        if not _same_key(cert, key):
            raise ProvisionError("cert_mismatch", "the CA returned a certificate for another key")
        write_public_file(chain_path, b"".join(c.public_bytes(PEM) for c in [cert, *chain]))
        write_public_file(recipient_path, load_cert(plan.ioc_cert).public_bytes(PEM))
    with step("step.gateway_config"):
        if plan.update_root is not None:
            try:
                root = plan.update_root.read_bytes()
                json.loads(root)
            except (OSError, ValueError) as exc:
                raise ProvisionError("config_invalid", f"{plan.update_root}: not a readable TUF root ({exc})") from None
            write_public_file(update_root_path(plan), root)
        text = render_config(plan, key_path, chain_path, recipient_path)
        plan.config_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = plan.config_path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, plan.config_path)
    with step("step.config_check"):
        from agent.config import ConfigError, load_config

        try:
            load_config(plan.config_path)
        except ConfigError as exc:
            raise ProvisionError("config_invalid", str(exc)) from None
    pid = None
    if plan.start_agent:
        with step("step.start_agent"):
            pid = start_agent(plan.config_path)
    receipt = None
    if plan.watch is not None:
        with step("step.wait_birth"):
            # The sealed agent_started event is the verified birth: no telemetry needed yet.
            receipt = plan.watch.wait(plan.gateway_id, cert, min_telemetry=0)
    state.clear()
    return GatewayResult(cert, pid, receipt)


def start_agent(config: Path) -> int:
    """Start the agent in the background through ``urbanedge launch --supervise`` (so signed
    updates and roll-back work from the first start; its own session, log next to the config);
    the launcher's pid goes to ``<config>.pid``. A service manager (systemd unit in
    docs/operations.md) takes over on real gateways; this is the first start the technician
    watches."""
    log_path = config.with_suffix(".log")
    pid_path = config.with_suffix(".pid")
    if pid_path.exists():
        try:
            old = int(pid_path.read_text().strip())
            os.kill(old, 0)
            os.kill(old, 15)  # a previous provisioning's agent: replaced by this one
            time.sleep(0.5)
        except (ValueError, OSError):
            pass
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "urbanedge", "launch", "-c", str(config), "--supervise"],
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    pid_path.write_text(f"{proc.pid}\n")
    time.sleep(1.0)
    if proc.poll() is not None:
        tail = log_path.read_text(errors="replace").splitlines()[-5:]
        raise ProvisionError("agent_failed", " | ".join(tail))
    return proc.pid
