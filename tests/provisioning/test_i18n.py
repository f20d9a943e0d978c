"""The message catalogs: complete in both languages, real Vietnamese, language picked as documented."""

from __future__ import annotations

import importlib
import re
import unicodedata
from pathlib import Path

import pytest

from provisioning.i18n import CATALOGS, EN, VI, Messages, pick_language, placeholders

REPO = Path(__file__).resolve().parents[2]

STEPS = ["check_port", "hello", "config", "keygen", "enrol", "install", "reboot", "wait_reading", "inventory",
         "gateway_key", "gateway_config", "config_check", "start_agent", "wait_birth", "revoke", "publish_crl",
         "wipe"]
STATUS = ["ok", "failed", "skipped", "resumed"]
# The reason codes of the parts' documented contracts (NodeLinkError, the node's own refusals,
# EstClientError) and the flows' own.
REASONS = ["port_missing", "no_answer", "not_provisioning_mode", "unplugged", "node_error",
           "config_invalid", "cert_mismatch", "unknown_op", "bad_frame",
           "unreachable", "tls_untrusted", "clock", "token_unknown", "token_expired", "token_used",
           "token_wrong_device", "token_malformed", "csr_invalid", "csr_ca", "csr_subject", "key_unsupported",
           "not_authorized", "server_error",
           "broker_refused", "no_reading", "already_provisioned", "unknown"]
REQUIRED = ([f"step.{s}" for s in STEPS] + [f"status.{s}" for s in STATUS] + [f"err.{r}" for r in REASONS]
            + ["done.provisioned", "done.decommissioned", "done.inventory"])

# Every letter of the Vietnamese alphabet that carries a mark: the vowels with their hats and
# horns, under each of the five tones, and đ.
_VOWELS = "aăâeêioôơuưy"
_TONES = ["", "\u0300", "\u0301", "\u0303", "\u0309", "\u0323"]  # huyền, sắc, ngã, hỏi, nặng
VIET_MARKED = ({unicodedata.normalize("NFC", v + t) for v in _VOWELS for t in _TONES} - set("aeiouy")) | {"đ"}
VIET_MARKED |= {c.upper() for c in VIET_MARKED}


def test_both_catalogs_hold_the_same_keys() -> None:
    assert set(EN) == set(VI)
    assert set(CATALOGS) == {"vi", "en"}


@pytest.mark.parametrize("key", REQUIRED)
def test_required_key_is_in_both(key: str) -> None:
    assert EN.get(key) and VI.get(key)


def test_placeholders_are_the_same_in_both() -> None:
    for key in EN:
        assert placeholders(EN[key]) == placeholders(VI[key]), key
    assert placeholders(EN["done.provisioned"]) == {"device"}
    assert placeholders(EN["done.decommissioned"]) == {"device"}
    assert placeholders(EN["done.inventory"]) == {"path"}
    assert placeholders(EN["err.unknown"]) == {"detail"}


def test_no_stray_braces() -> None:
    # A typo such as "{device" would print as is; format() would refuse it.
    for catalog in (EN, VI):
        for key, text in catalog.items():
            try:
                text.format(**dict.fromkeys(placeholders(text), "x"))
            except (ValueError, IndexError, KeyError) as exc:
                pytest.fail(f"{key}: {exc}")


@pytest.mark.parametrize("key", sorted(VI))
def test_vietnamese_is_vietnamese(key: str) -> None:
    text = VI[key]
    assert unicodedata.is_normalized("NFC", text), "composed letters, as Vietnamese keyboards type them"
    assert set(text) & VIET_MARKED, f"{key}: no Vietnamese letter in {text!r}"
    foreign = {c for c in text if not c.isascii() and c not in VIET_MARKED}
    assert not foreign, f"{key}: letters that are not Vietnamese: {foreign}"
    assert text != EN[key]


def test_every_reason_the_code_raises_has_advice() -> None:
    """A reason raised anywhere in the provisioning code or the enrolment client (whoever adds
    one later) must tell the technician what to check, in both languages."""
    pattern = re.compile(r"(?:ProvisionError|NodeLinkError|EstClientError)\(\s*\"([a-z_]+)\"")
    files = [*(REPO / "provisioning").glob("*.py"), *(REPO / "pki" / "enroll").glob("*.py")]
    raised = {m for f in files for m in pattern.findall(f.read_text(encoding="utf-8"))}
    assert {"already_provisioned", "no_reading"} <= raised  # the scan does see the flows
    missing = sorted(r for r in raised if f"err.{r}" not in EN)
    assert not missing, f"no advice for {missing}"


@pytest.mark.parametrize("flag,env,want", [
    ("vi", {"LANG": "en_US.UTF-8"}, "vi"),
    ("en", {"LC_ALL": "vi_VN.UTF-8"}, "en"),
    (None, {"LC_ALL": "vi_VN.UTF-8", "LANG": "en_US.UTF-8"}, "vi"),
    (None, {"LC_ALL": "en_GB.UTF-8", "LC_MESSAGES": "vi_VN", "LANG": "vi_VN"}, "en"),
    (None, {"LC_ALL": "", "LC_MESSAGES": "vi_VN.UTF-8", "LANG": "en_US"}, "vi"),
    (None, {"LC_MESSAGES": "fr_FR", "LANG": "vi_VN"}, "en"),
    (None, {"LANG": "vi_VN.UTF-8"}, "vi"),
    (None, {"LANG": "vi"}, "vi"),
    (None, {"LANG": "C.UTF-8"}, "en"),
    (None, {"LANG": "POSIX"}, "en"),
    (None, {}, "en"),
    ("", {"LANG": "vi_VN.UTF-8"}, "vi"),
])
def test_pick_language(flag: str | None, env: dict[str, str], want: str) -> None:
    assert pick_language(flag, env) == want


def test_messages_format_and_refuse_unknown() -> None:
    assert Messages("en").t("done.provisioned", device="node-1") == "Done: node-1 is provisioned and trusted."
    assert Messages("vi").t("done.inventory", path="/tmp/x.csv") == "Đã ghi sổ thiết bị ra /tmp/x.csv."
    # A value is inserted as it is, braces and all.
    assert Messages("en").t("err.unknown", detail="{oops}").startswith("Unexpected error: {oops}.")
    with pytest.raises(KeyError):
        Messages("vi").t("step.nonexistent")
    assert not Messages("en").has("step.nonexistent") and Messages("en").has("step.enrol")
    with pytest.raises(ValueError):
        Messages("fr")


def test_every_enrolment_client_reason_has_advice() -> None:
    client = importlib.import_module("pki.enroll.client")
    missing = sorted(r for r in client.CLIENT_REASONS if f"err.{r}" not in EN)
    assert not missing, f"no advice for {missing}"
