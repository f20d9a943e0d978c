"""Release checks and rollout cohorts (ota/release_meta.py, sans-IO)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ota.release_meta import (
    BadReleaseMetadata,
    ReleaseInfo,
    ReleaseRejected,
    Rollout,
    Verdict,
    check_release,
    in_cohort,
    parse_custom,
    parse_rollout,
    version_key,
)

HASHES = {"sha256": "ab" * 32}


def custom(**over: Any) -> dict[str, Any]:
    ue: dict[str, Any] = {"kind": "gateway", "version": "0.2.0", "release_counter": 2, "hw": ["gateway-linux"],
                          "min_agent_version": "0.1.0", "sbom": "gateway/urbanedge-0.2.0.cdx.json"}
    ue.update(over)
    return {"urbanedge": {k: v for k, v in ue.items() if v is not ...}}


def info(**over: Any) -> ReleaseInfo:
    return parse_custom("gateway/urbanedge-0.2.0.tar.gz", custom(**over), 1234, HASHES)


def test_parse_custom_reads_every_field() -> None:
    i = info()
    assert i == ReleaseInfo(path="gateway/urbanedge-0.2.0.tar.gz", kind="gateway", version="0.2.0",
                            release_counter=2, hw=("gateway-linux",), min_agent_version="0.1.0",
                            sbom="gateway/urbanedge-0.2.0.cdx.json", length=1234, hashes=HASHES)
    assert info(min_agent_version=..., sbom=...).min_agent_version is None


@pytest.mark.parametrize(("over", "field"), [
    ({"kind": ...}, "custom.urbanedge.kind"),
    ({"version": "two"}, "custom.urbanedge.version"),
    ({"release_counter": "2"}, "custom.urbanedge.release_counter"),
    ({"release_counter": True}, "custom.urbanedge.release_counter"),
    ({"release_counter": -1}, "custom.urbanedge.release_counter"),
    ({"hw": []}, "custom.urbanedge.hw"),
    ({"hw": "gateway-linux"}, "custom.urbanedge.hw"),
    ({"min_agent_version": "latest"}, "custom.urbanedge.min_agent_version"),
    ({"sbom": 3}, "custom.urbanedge.sbom"),
])
def test_parse_custom_names_the_bad_field(over: dict[str, Any], field: str) -> None:
    with pytest.raises(BadReleaseMetadata) as e:
        info(**over)
    assert e.value.field == field
    assert field in str(e.value)


def test_parse_custom_without_urbanedge_metadata() -> None:
    with pytest.raises(BadReleaseMetadata, match=r"custom\.urbanedge: missing in target x"):
        parse_custom("x", None, 1, HASHES)


def test_check_release_verdicts() -> None:
    ok = dict(hw="gateway-linux", agent_version="0.1.0")
    assert check_release(info(), committed_counter=1, **ok) is Verdict.INSTALL
    assert check_release(info(), committed_counter=2, **ok) == "already-installed"
    with pytest.raises(ReleaseRejected) as e:
        check_release(info(), committed_counter=3, **ok)
    assert e.value.reason == "rollback"
    with pytest.raises(ReleaseRejected) as e:
        check_release(info(), committed_counter=1, hw="esp32-s3", agent_version="0.1.0")
    assert e.value.reason == "wrong-hardware"
    with pytest.raises(ReleaseRejected) as e:
        check_release(info(min_agent_version="0.1.10"), committed_counter=1, hw="gateway-linux",
                      agent_version="0.1.9")
    assert e.value.reason == "agent-too-old"
    # Wrong hardware wins over everything: it must never be "already installed".
    with pytest.raises(ReleaseRejected, match="wrong-hardware"):
        check_release(info(), committed_counter=2, hw="esp32", agent_version="9.9")


def test_version_order() -> None:
    assert version_key("0.10.0") > version_key("0.9.1")
    assert version_key("1.0") == version_key("1.0.0")
    assert version_key("1.0.0rc1") < version_key("1.0.0") < version_key("1.0.1a1")
    assert version_key("1.0.0a2") < version_key("1.0.0b1") < version_key("1.0.0rc1")
    with pytest.raises(ValueError, match="not a version"):
        version_key("1.0-beta")


def rollout_bytes(**over: Any) -> bytes:
    obj: dict[str, Any] = {"id": "r-1", "release": "gateway/urbanedge-0.2.0.tar.gz", "sites": None,
                           "percent": 10, "state": "active"}
    obj.update(over)
    return json.dumps(obj).encode()


def test_parse_rollout_and_round_trip() -> None:
    r = parse_rollout(rollout_bytes(sites=["hai-chau"]))
    assert r == Rollout(id="r-1", release="gateway/urbanedge-0.2.0.tar.gz", sites=("hai-chau",), percent=10,
                        state="active")
    assert parse_rollout(json.dumps(r.to_dict()).encode()) == r


@pytest.mark.parametrize(("data", "field"), [
    (b"{", "rollout"),
    (b"[]", "rollout"),
    (rollout_bytes(id=""), "rollout.id"),
    (rollout_bytes(release=None), "rollout.release"),
    (rollout_bytes(sites="all"), "rollout.sites"),
    (rollout_bytes(percent=101), "rollout.percent"),
    (rollout_bytes(percent=50.0), "rollout.percent"),
    (rollout_bytes(percent=True), "rollout.percent"),
    (rollout_bytes(state="paused"), "rollout.state"),
])
def test_parse_rollout_names_the_bad_field(data: bytes, field: str) -> None:
    with pytest.raises(BadReleaseMetadata) as e:
        parse_rollout(data)
    assert e.value.field == field


def test_cohort_is_the_contract_formula() -> None:
    r = Rollout(id="r-7", release="x", sites=None, percent=37, state="active")
    for dev in (f"gw-{i}" for i in range(200)):
        bucket = int(hashlib.sha256(f"r-7:{dev}".encode()).hexdigest()[:8], 16) % 100
        assert in_cohort(r, dev, "any") is (bucket < 37)


def test_cohort_sites_and_halted() -> None:
    r = Rollout(id="r-1", release="x", sites=("hai-chau",), percent=100, state="active")
    assert in_cohort(r, "gw-1", "hai-chau")
    assert not in_cohort(r, "gw-1", "son-tra")
    assert not in_cohort(r, "gw-1", None)
    assert not in_cohort(Rollout(id="r-1", release="x", sites=None, percent=100, state="halted"), "gw-1", "s")


ids = st.text(min_size=1, max_size=20)


@given(rid=ids, dev=ids, site=st.one_of(st.none(), ids))
def test_percent_0_takes_nobody_and_100_everybody(rid: str, dev: str, site: str | None) -> None:
    assert not in_cohort(Rollout(id=rid, release="x", sites=None, percent=0, state="active"), dev, site)
    assert in_cohort(Rollout(id=rid, release="x", sites=None, percent=100, state="active"), dev, site)


@given(rid=ids, dev=ids, p=st.integers(0, 100), q=st.integers(0, 100))
def test_cohort_is_monotone_in_percent(rid: str, dev: str, p: int, q: int) -> None:
    lo, hi = sorted((p, q))
    if in_cohort(Rollout(id=rid, release="x", sites=None, percent=lo, state="active"), dev, "s"):
        assert in_cohort(Rollout(id=rid, release="x", sites=None, percent=hi, state="active"), dev, "s")


@given(counter=st.integers(0, 1000), committed=st.integers(0, 1000))
def test_counter_decides_rollback_install_or_installed(counter: int, committed: int) -> None:
    i = info(release_counter=counter, min_agent_version=...)
    if counter < committed:
        with pytest.raises(ReleaseRejected, match="rollback"):
            check_release(i, committed_counter=committed, hw="gateway-linux", agent_version="0.1.0")
    else:
        v = check_release(i, committed_counter=committed, hw="gateway-linux", agent_version="0.1.0")
        assert v is (Verdict.INSTALL if counter > committed else Verdict.ALREADY_INSTALLED)
