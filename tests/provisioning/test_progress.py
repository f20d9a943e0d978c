"""What the technician sees, line by line, in both languages."""

from __future__ import annotations

import importlib
import io
import os
from collections.abc import Iterator

import pytest

from provisioning.errors import ProvisionError
from provisioning.i18n import EN, VI, Messages
from provisioning.progress import Progress, wants_colour


def progress(lang: str, total: int = 3) -> tuple[Progress, io.StringIO]:
    out = io.StringIO()
    return Progress(Messages(lang), total, out), out


def test_steps_render_in_english() -> None:
    p, out = progress("en")
    with p.step("step.check_port"):
        # Shown before the step ends, so a long wait says what it waits for.
        assert out.getvalue() == "[1/3] Opening the USB serial port ..."
    with p.step("step.hello"):
        pass
    p.skip("step.wait_reading")
    assert out.getvalue().splitlines() == [
        "[1/3] Opening the USB serial port ... ok",
        "[2/3] Talking to the node ... ok",
        "[3/3] Waiting for the IOC to confirm a verified reading ... skipped",
    ]


def test_steps_render_in_vietnamese() -> None:
    p, out = progress("vi", total=2)
    p.resumed("step.enrol")
    with p.step("step.install"):
        pass
    assert out.getvalue().splitlines() == [
        "[1/2] Xin cấp chứng thư từ CA của tỉnh ... đã xong từ lần trước",
        "[2/2] Cài chứng thư vào node ... đã xong",
    ]


@pytest.mark.parametrize("lang,catalog,failed", [("en", EN, "failed"), ("vi", VI, "lỗi")])
def test_failure_prints_the_advice_of_its_reason(lang: str, catalog: dict[str, str], failed: str) -> None:
    p, out = progress(lang)
    with p.step("step.check_port"):
        pass
    exc = ProvisionError("token_expired", "uet1.abc expired at 2025-03-01T08:00:00Z")
    with pytest.raises(ProvisionError) as raised, p.step("step.enrol"):
        raise exc
    assert raised.value is exc  # the flow still sees its own exception
    lines = out.getvalue().splitlines()
    assert lines[1] == f"[2/3] {catalog['step.enrol']} ... {failed}"
    assert lines[2].strip() == catalog["err.token_expired"]
    assert lines[3].strip() == f"{catalog['label.detail']}: uet1.abc expired at 2025-03-01T08:00:00Z"
    assert len(lines) == 4


@pytest.mark.parametrize("reason", ["port_missing", "no_answer", "not_provisioning_mode", "unplugged", "clock",
                                    "token_used", "broker_refused", "no_reading", "already_provisioned"])
def test_each_reason_gets_its_own_advice(reason: str) -> None:
    p, out = progress("vi")
    with pytest.raises(ProvisionError), p.step("step.hello"):
        raise ProvisionError(reason, "x")
    assert VI[f"err.{reason}"] in out.getvalue()


def test_unknown_reason_falls_back_with_the_detail() -> None:
    p, out = progress("en")
    with pytest.raises(ProvisionError), p.step("step.revoke"):
        raise ProvisionError("disk_on_fire", "smoke from /dev/sda")
    advice = out.getvalue().splitlines()[1].strip()
    assert advice == EN["err.unknown"].format(detail="disk_on_fire: smoke from /dev/sda")


def test_exception_without_reason_is_unexpected() -> None:
    p, out = progress("vi")
    with pytest.raises(ZeroDivisionError), p.step("step.config_check"):
        1 / 0  # noqa: B018
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("... lỗi")
    assert lines[1].strip().startswith("Lỗi không xác định: ZeroDivisionError: division by zero.")
    assert len(lines) == 2  # the detail is in the message already, not repeated


def test_offline_enrolment_is_pending_not_failed() -> None:
    p, out = progress("en")
    with pytest.raises(ProvisionError), p.step("step.enrol"):
        raise ProvisionError("offline_pending", "/media/usb/node-1.csr -> /media/usb/node-1-chain.pem")
    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/3] Getting the certificate from the provincial CA ... waiting for the CA"
    assert lines[1].strip().endswith("run the same command again: /media/usb/node-1.csr -> "
                                     "/media/usb/node-1-chain.pem")


def test_interrupt_is_marked_failed_without_advice() -> None:
    p, out = progress("en")
    with pytest.raises(KeyboardInterrupt), p.step("step.wait_birth"):
        raise KeyboardInterrupt
    assert out.getvalue() == "[1/3] Waiting for the IOC to confirm the gateway ... failed\n"


def test_count_grows_past_a_wrong_total_and_nested_steps_stay_readable() -> None:
    p, out = progress("en", total=1)
    with p.step("step.revoke"), p.step("step.publish_crl"):
        pass
    assert out.getvalue().splitlines() == [
        "[1/1] Revoking the certificate ...",
        "[2/2] Publishing the revocation list (CRL) ... ok",
        "[1/1] Revoking the certificate ... ok",
    ]
    p.say("done.decommissioned", device="node-1")
    assert out.getvalue().splitlines()[-1] == "Done: node-1 is decommissioned; the IOC now refuses its data."


@pytest.mark.parametrize("module,cls,reason,key", [
    ("provisioning.node_link", "NodeLinkError", "unplugged", "err.unplugged"),
    ("pki.enroll.client", "EstClientError", "token_used", "err.token_used"),
    ("pki.enroll.tokens", "TokenError", "used", "err.token_used"),
    ("pki.enroll.tokens", "TokenError", "wrong_device", "err.token_wrong_device"),
])
def test_the_parts_own_errors_are_explained(module: str, cls: str, reason: str, key: str) -> None:
    """The contract is two attributes, not a base class: each part's real exception type."""
    error_type = getattr(importlib.import_module(module), cls)
    p, out = progress("vi")
    with pytest.raises(error_type), p.step("step.enrol"):
        raise error_type(reason, "d")
    assert VI[key] in out.getvalue()


@pytest.fixture
def pty_out() -> Iterator[io.TextIOWrapper]:
    """A real terminal to write to (the laptop's console)."""
    master, slave = os.openpty()
    out = os.fdopen(slave, "w", encoding="utf-8")
    try:
        yield out
    finally:
        out.close()
        os.close(master)


def test_colour_only_on_a_terminal(pty_out: io.TextIOWrapper) -> None:
    assert wants_colour(pty_out, {"TERM": "xterm"})
    assert not wants_colour(pty_out, {"TERM": "xterm", "NO_COLOR": "1"})
    assert not wants_colour(pty_out, {"TERM": "dumb"})
    assert not wants_colour(io.StringIO(), {"TERM": "xterm"})
    p, out = progress("en")
    with pytest.raises(ProvisionError), p.step("step.hello"):
        raise ProvisionError("no_answer")
    assert "\033" not in out.getvalue()
    coloured = io.StringIO()
    p = Progress(Messages("en"), 1, coloured, colour=True)
    with p.step("step.hello"):
        pass
    assert coloured.getvalue() == "[1/1] Talking to the node ... \033[32mok\033[0m\n"



def test_a_node_refusal_is_explained_by_the_nodes_own_reason() -> None:
    error_type = importlib.import_module("provisioning.node_link").NodeLinkError
    p, out = progress("en")
    with pytest.raises(error_type), p.step("step.config"):
        raise error_type("node_error", "config: config_invalid: node.json: bus.port: missing",
                         node_reason="config_invalid")
    assert EN["err.config_invalid"] in out.getvalue()
    p, out = progress("en")
    with pytest.raises(error_type), p.step("step.config"):  # a refusal we have no advice for
        raise error_type("node_error", "config: disk_full: no space", node_reason="disk_full")
    assert EN["err.node_error"] in out.getvalue() and "detail: config: disk_full: no space" in out.getvalue()
