"""The gateway's TUF client against a real repository over real HTTP, and every attack we defend.

No mocks: the repository is signed with real keys by ota.repo, served by ota.static_server on a
free loopback port, and attacked by editing its files or switching on server faults.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]

from agent.update.errors import InsufficientSpace, UpdateRejected, UpdateUnavailable
from ota.release_meta import ReleaseRejected, Verdict, check_release
from ota.repo import Repo
from ota.static_server import StaticServer
from tests.ota.tuf_support import FAST, client, publish_gateway, target_file, target_url_path
from tests.support.ports import free_port


@pytest.fixture
def tuf_repo(tmp_path: Path) -> Repo:
    repo = Repo.create(tmp_path / "repo", tmp_path / "keys")
    publish_gateway(repo, tmp_path, "0.2.0", 2)
    return repo


@pytest.fixture
def tuf_server(tuf_repo: Repo) -> Iterator[StaticServer]:
    with StaticServer(tuf_repo.repo_dir) as srv:
        yield srv


GW = "gateway/urbanedge-0.2.0.tar.gz"


def test_happy_path(tuf_repo: Repo, tuf_server: StaticServer, tmp_path: Path) -> None:
    c = client(tuf_repo, tuf_server.url, tmp_path / "gw")
    c.refresh()
    rollout = c.rollout("gateway")
    assert rollout is not None
    assert (rollout.id, rollout.release, rollout.percent, rollout.state) == ("r-0.2.0", GW, 100, "active")
    assert c.rollout("node-esp32") is None
    info = c.release(rollout.release)
    assert (info.kind, info.version, info.release_counter, info.hw) == ("gateway", "0.2.0", 2, ("gateway-linux",))
    assert c.check(info, committed_counter=1, hw="gateway-linux", agent_version="0.1.0") is Verdict.INSTALL
    path = c.download(info)
    assert path.read_bytes() == target_file(tuf_repo, GW).read_bytes()
    # Already verified on disk: a second download asks the server for nothing.
    url = target_url_path(tuf_repo, GW)
    assert tuf_server.faults.count(url) == 1
    assert c.download(info) == path
    assert tuf_server.faults.count(url) == 1
    assert not any((tmp_path / "gw" / "downloads" / "partial").iterdir())


def test_targets_signed_by_a_foreign_key(tuf_repo: Repo, tuf_server: StaticServer, tmp_path: Path) -> None:
    tuf_repo.publish(targets_signers=[CryptoSigner.generate_ed25519()])
    with pytest.raises(UpdateRejected) as e:
        client(tuf_repo, tuf_server.url, tmp_path / "gw").refresh()
    assert e.value.reason == "bad-signature"
    assert isinstance(e.value, ReleaseRejected)


def test_root_signed_below_threshold(tuf_repo: Repo, tuf_server: StaticServer, tmp_path: Path) -> None:
    tuf_repo.publish_root(signers=tuf_repo.signers["root"][:1])
    with pytest.raises(UpdateRejected) as e:
        client(tuf_repo, tuf_server.url, tmp_path / "gw").refresh()
    assert e.value.reason == "below-threshold"
    assert "1/2" in e.value.detail


def test_root_signed_by_both_keys_is_accepted(tuf_repo: Repo, tuf_server: StaticServer, tmp_path: Path) -> None:
    # The counterpart of the test above: the same rotation with the threshold met goes through.
    tuf_repo.publish_root()
    c = client(tuf_repo, tuf_server.url, tmp_path / "gw")
    c.refresh()
    assert (tmp_path / "gw" / "metadata" / "root_history" / "2.root.json").exists()


def test_tampered_target_same_length(tuf_repo: Repo, tuf_server: StaticServer, tmp_path: Path) -> None:
    f = target_file(tuf_repo, GW)
    data = bytearray(f.read_bytes())
    data[1000] ^= 0xFF
    f.write_bytes(bytes(data))
    c = client(tuf_repo, tuf_server.url, tmp_path / "gw")
    with pytest.raises(UpdateRejected) as e:
        c.download(c.release(GW))
    assert e.value.reason == "tampered"
    assert not c.destination(GW).exists()
    assert not any((tmp_path / "gw" / "downloads" / "partial").iterdir())


def test_endless_data(tuf_repo: Repo, tuf_server: StaticServer, tmp_path: Path) -> None:
    url = target_url_path(tuf_repo, GW)
    tuf_server.faults.append(url, b"\0" * 5_000_000)
    c = client(tuf_repo, tuf_server.url, tmp_path / "gw")
    with pytest.raises(UpdateRejected) as e:
        c.download(c.release(GW))
    assert e.value.reason == "too-long"
    assert tuf_server.faults.count(url) == 1  # terminal: not retried
    assert not c.destination(GW).exists()


def test_replayed_timestamp(tuf_repo: Repo, tuf_server: StaticServer, tmp_path: Path) -> None:
    ts = tuf_repo.metadata_dir / "timestamp.json"
    old = ts.read_bytes()
    publish_gateway(tuf_repo, tmp_path, "0.3.0", 3)
    client(tuf_repo, tuf_server.url, tmp_path / "gw").refresh()  # the device saw the new timestamp
    ts.write_bytes(old)  # a mirror (or attacker) serves the old one again
    with pytest.raises(UpdateRejected) as e:
        client(tuf_repo, tuf_server.url, tmp_path / "gw").refresh()
    assert e.value.reason == "replayed"


def test_expired_timestamp_freeze(tuf_repo: Repo, tuf_server: StaticServer, tmp_path: Path) -> None:
    tuf_repo.refresh_timestamp(expiry=timedelta(seconds=-1))
    with pytest.raises(UpdateRejected) as e:
        client(tuf_repo, tuf_server.url, tmp_path / "gw").refresh()
    assert e.value.reason == "expired"
    tuf_repo.refresh_timestamp()
    client(tuf_repo, tuf_server.url, tmp_path / "gw").refresh()


def test_validly_signed_older_release_is_a_rollback(tuf_repo: Repo, tuf_server: StaticServer,
                                                    tmp_path: Path) -> None:
    old = publish_gateway(tuf_repo, tmp_path, "0.1.5", 1)
    c = client(tuf_repo, tuf_server.url, tmp_path / "gw")
    rollout = c.rollout("gateway")
    assert rollout is not None and rollout.release == old
    info = c.release(old)
    with pytest.raises(UpdateRejected) as e:
        c.check(info, committed_counter=2, hw="gateway-linux", agent_version="0.2.0")
    assert e.value.reason == "rollback"
    with pytest.raises(ReleaseRejected, match="rollback"):
        check_release(info, committed_counter=2, hw="gateway-linux", agent_version="0.2.0")


def test_release_for_other_hardware(tuf_repo: Repo, tuf_server: StaticServer, tmp_path: Path) -> None:
    other = publish_gateway(tuf_repo, tmp_path, "0.3.0", 3, hw=("gateway-arm-imx8",))
    c = client(tuf_repo, tuf_server.url, tmp_path / "gw")
    with pytest.raises(UpdateRejected) as e:
        c.check(c.release(other), committed_counter=2, hw="gateway-linux", agent_version="0.2.0")
    assert e.value.reason == "wrong-hardware"


def test_unknown_release_target(tuf_repo: Repo, tuf_server: StaticServer, tmp_path: Path) -> None:
    with pytest.raises(UpdateRejected) as e:
        client(tuf_repo, tuf_server.url, tmp_path / "gw").release("gateway/urbanedge-9.9.9.tar.gz")
    assert e.value.reason == "unknown-target"


def test_server_down(tuf_repo: Repo, tmp_path: Path) -> None:
    sleeps: list[float] = []
    c = client(tuf_repo, f"http://127.0.0.1:{free_port()}", tmp_path / "gw")
    c.fetcher._sleep = sleeps.append
    with pytest.raises(UpdateUnavailable, match="giving up after 4 requests"):
        c.refresh()
    # Backoff between the 4 attempts grows (with jitter of at most half).
    assert len(sleeps) == 3
    assert sleeps[0] <= FAST.backoff_base and sleeps[2] >= 2 * FAST.backoff_base


@pytest.mark.parametrize(("status", "requests"), [(404, 1), (403, 1), (410, 1), (429, 4), (408, 4), (503, 4)])
def test_4xx_is_final_but_busy_and_timeout_are_retried(tuf_repo: Repo, tuf_server: StaticServer, tmp_path: Path,
                                                        status: int, requests: int) -> None:
    tuf_server.faults.fail("/metadata/timestamp.json", status)
    with pytest.raises(UpdateUnavailable, match=str(status)):
        client(tuf_repo, tuf_server.url, tmp_path / "gw").refresh()
    assert tuf_server.faults.count("/metadata/timestamp.json") == requests


def test_500_is_retried_a_bounded_number_of_times(tuf_repo: Repo, tuf_server: StaticServer,
                                                 tmp_path: Path) -> None:
    c = client(tuf_repo, tuf_server.url, tmp_path / "gw")
    info = c.release(GW)
    url = target_url_path(tuf_repo, GW)
    tuf_server.faults.fail(url, 500)
    with pytest.raises(UpdateUnavailable, match="500"):
        c.download(info)
    assert tuf_server.faults.count(url) == FAST.attempts == 4
    tuf_server.faults.clear()
    assert c.download(info).read_bytes() == target_file(tuf_repo, GW).read_bytes()


def test_cut_download_resumes_with_range(tuf_repo: Repo, tuf_server: StaticServer, tmp_path: Path) -> None:
    c = client(tuf_repo, tuf_server.url, tmp_path / "gw")
    info = c.release(GW)
    url = target_url_path(tuf_repo, GW)
    cut = info.length // 2
    tuf_server.faults.cut(url, after=cut)
    path = c.download(info)
    assert path.read_bytes() == target_file(tuf_repo, GW).read_bytes()
    assert tuf_server.faults.ranges(url) == [f"bytes={cut}-"]
    assert tuf_server.faults.count(url) == 2
    assert tuf_server.faults.sent(url) < 2 * info.length


def test_a_trickling_mirror_is_given_up_and_what_it_sent_is_resumed(tuf_repo: Repo, tuf_server: StaticServer,
                                                                      tmp_path: Path) -> None:
    """Slow loris: 200 bytes every 0.1 s, each within the read timeout, is 2 kB/s; below the
    10 kB/s asked for here, each response is dropped after 0.5 s and counted, so the download
    gives up after ``attempts`` such requests instead of holding the update forever."""
    slow = dataclasses.replace(FAST, min_rate=10_000, slow_after=0.5)
    c = client(tuf_repo, tuf_server.url, tmp_path / "gw", slow)
    info = c.release(GW)
    url = target_url_path(tuf_repo, GW)
    tuf_server.faults.trickle(url, step=200, pause=0.1)
    with pytest.raises(UpdateUnavailable) as e:
        c.download(info)
    assert "B/s" in str(e.value)
    assert tuf_server.faults.count(url) == slow.attempts  # each trickle counted, though it brought bytes
    partial = next((tmp_path / "gw" / "downloads" / "partial").iterdir())
    kept = partial.stat().st_size
    assert 0 < kept < info.length
    # The mirror is fixed: the download goes on from what the trickle brought.
    tuf_server.faults.clear()
    assert c.download(info).read_bytes() == target_file(tuf_repo, GW).read_bytes()
    assert tuf_server.faults.ranges(url)[-1] == f"bytes={kept}-"


def test_restart_resumes_from_the_persisted_partial(tuf_repo: Repo, tuf_server: StaticServer,
                                                    tmp_path: Path) -> None:
    url = target_url_path(tuf_repo, GW)
    # The first agent gets one request in before it "dies" (max_requests=1 stops it there).
    first = client(tuf_repo, tuf_server.url, tmp_path / "gw", dataclasses.replace(FAST, max_requests=1))
    info = first.release(GW)
    cut = info.length // 3
    tuf_server.faults.cut(url, after=cut)
    with pytest.raises(UpdateUnavailable):
        first.download(info)
    partials = list((tmp_path / "gw" / "downloads" / "partial").iterdir())
    assert [p.stat().st_size for p in partials] == [cut]
    assert partials[0].stat().st_mode & 0o777 == 0o600

    second = client(tuf_repo, tuf_server.url, tmp_path / "gw")
    path = second.download(second.release(GW))
    assert path.read_bytes() == target_file(tuf_repo, GW).read_bytes()
    assert tuf_server.faults.ranges(url) == [f"bytes={cut}-"]
    assert tuf_server.faults.sent(url) == info.length  # not one byte fetched twice
    assert not partials[0].exists()


def test_bad_partial_is_deleted_after_the_hash_check(tuf_repo: Repo, tuf_server: StaticServer,
                                                     tmp_path: Path) -> None:
    c = client(tuf_repo, tuf_server.url, tmp_path / "gw")
    info = c.release(GW)
    url = target_url_path(tuf_repo, GW)
    partial = c.fetcher.partial_path(f"{tuf_server.url}{url}")
    assert partial is not None
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\xaa" * 1000)  # garbage from, say, a disk error
    with pytest.raises(UpdateRejected) as e:
        c.download(info)
    assert e.value.reason == "tampered"
    assert tuf_server.faults.ranges(url) == ["bytes=1000-"]
    assert not partial.exists()
    assert c.download(info).read_bytes() == target_file(tuf_repo, GW).read_bytes()


def test_insufficient_space(tuf_repo: Repo, tuf_server: StaticServer, tmp_path: Path) -> None:
    # A margin larger than any disk (free space moves while other tests run).
    margin = max(2**50, 2 * shutil.disk_usage(tmp_path).total)
    c = client(tuf_repo, tuf_server.url, tmp_path / "gw", space_margin=margin)
    info = c.release(GW)
    with pytest.raises(InsufficientSpace) as e:
        c.download(info)
    assert e.value.need > e.value.free
    assert tuf_server.faults.count(target_url_path(tuf_repo, GW)) == 0
