"""Password hashing, the password file, sessions, CSRF and failed-login throttling (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.web.auth import (
    MIN_ITERATIONS,
    LoginThrottle,
    PasswordFileError,
    SessionStore,
    StoredHash,
    csrf_ok,
    hash_password,
    parse_password_file,
    set_password_line,
    verify_password,
)

FAST = MIN_ITERATIONS  # the lowest the file accepts: keeps the property tests quick


@settings(max_examples=8, deadline=None)
@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_hash_verifies_its_password_only(password: str, other: str) -> None:
    stored = StoredHash.parse(hash_password(password, iterations=FAST))
    assert verify_password(password, stored)
    assert verify_password(other, stored) == (other == password)


def test_hashes_are_salted_and_carry_their_cost() -> None:
    a, b = hash_password("same password", iterations=FAST), hash_password("same password", iterations=FAST)
    assert a != b  # random salt
    scheme, n, _, _ = a.split("$")
    assert (scheme, int(n)) == ("pbkdf2-sha256", FAST)
    assert "same password" not in a


def test_bad_passwords_and_hashes_are_refused() -> None:
    with pytest.raises(ValueError):
        hash_password("")
    with pytest.raises(ValueError):
        hash_password("x" * 2000, iterations=FAST)
    assert not verify_password("x" * 2000, StoredHash.parse(hash_password("x", iterations=FAST)))
    for bad in ("md5$1$2", "pbkdf2-sha256$1000$AAAAAAAAAAA=$" + "A" * 44,  # too cheap
                "pbkdf2-sha256$x$AAAA$AAAA", "pbkdf2-sha256$200000$!!$AAAA"):
        with pytest.raises(ValueError):
            StoredHash.parse(bad)


def test_password_file_lines() -> None:
    h = hash_password("pw-one-long", iterations=FAST)
    users = parse_password_file(f"# technicians\n\ntech:{h}\nlead@dn:{h}\n")
    assert set(users) == {"tech", "lead@dn"}
    with pytest.raises(PasswordFileError, match="line 2: user 'tech' listed twice"):
        parse_password_file(f"tech:{h}\ntech:{h}\n")
    with pytest.raises(PasswordFileError, match="line 1"):
        parse_password_file("no colon here\n")
    with pytest.raises(PasswordFileError, match="line 1"):
        parse_password_file("tech:plaintext\n")


def test_set_password_line_replaces_one_user_and_keeps_the_rest() -> None:
    text = "# comment\nalice:OLD\nbob:KEEP\n"
    out = set_password_line(text, "alice", "NEW")
    assert out == "# comment\nalice:NEW\nbob:KEEP\n"
    assert set_password_line(out, "carol", "C").endswith("bob:KEEP\ncarol:C\n")
    with pytest.raises(ValueError):
        set_password_line(text, "bad:name", "X")


def _tokens() -> object:
    n = iter(range(10**6))
    return lambda: f"tok{next(n)}"


def test_sessions_expire_on_idle_and_on_lifetime() -> None:
    s = SessionStore(ttl=100, idle=30, token=_tokens())  # type: ignore[arg-type]
    token, sess = s.create("tech", now=1000)
    assert s.get(token, 1020) is sess
    assert s.get(token, 1045) is sess  # 25 s idle since 1020
    assert s.get(token, 1080) is None  # 35 s idle: gone
    token, _ = s.create("tech", now=2000)
    for now in range(2010, 2100, 20):
        assert s.get(token, now) is not None
    assert s.get(token, 2101) is None  # lifetime over although active
    assert s.get("unknown", 2101) is None and s.get(None, 2101) is None


def test_sessions_are_bounded_and_logout_drops() -> None:
    s = SessionStore(ttl=100, idle=100, max_sessions=3, token=_tokens())  # type: ignore[arg-type]
    toks = [s.create("u", now=10 + i)[0] for i in range(5)]
    assert len(s) == 3
    assert s.get(toks[0], 20) is None and s.get(toks[4], 20) is not None
    s.drop(toks[4])
    assert s.get(toks[4], 20) is None


def test_each_session_has_its_own_csrf_token() -> None:
    s = SessionStore(ttl=100, idle=100)
    _, a = s.create("u", 0)
    _, b = s.create("u", 0)
    assert a.csrf != b.csrf and len(a.csrf) >= 32
    assert csrf_ok(a.csrf, a.csrf)
    assert not csrf_ok(a.csrf, b.csrf) and not csrf_ok(a.csrf, None) and not csrf_ok("", "")


def test_throttle_locks_after_the_limit_and_doubles() -> None:
    th = LoginThrottle(limit=3, window=60, lockout=10, max_lockout=35)
    for i in range(2):
        th.failed("ip", 100 + i)
        assert th.retry_after("ip", 100 + i) == 0
    th.failed("ip", 102)
    assert th.retry_after("ip", 102) == 10
    assert th.retry_after("ip", 112) == 0
    for i in range(3):
        th.failed("ip", 113 + i)
    assert th.retry_after("ip", 115) == 20  # second lockout: doubled
    for i in range(3):
        th.failed("ip", 140 + i)
    assert th.retry_after("ip", 142) == 35  # capped
    th.succeeded("ip")
    assert th.retry_after("ip", 142) == 0
    th.failed("ip", 200)
    th.failed("ip", 201)
    th.failed("ip", 300)  # the window has passed: counting starts again
    assert th.retry_after("ip", 300) == 0


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.floats(0, 10), st.booleans()), max_size=200))
def test_throttle_is_bounded_and_never_negative(events: list[tuple[str, float, bool]]) -> None:
    th = LoginThrottle(limit=2, window=5, lockout=1, max_lockout=4, max_keys=4)
    now = 0.0
    for key, dt, ok in events:
        now += dt
        if ok:
            th.succeeded(key)
        else:
            th.failed(key, now)
        assert 0 <= th.retry_after(key, now) <= 4
        assert len(th._keys) <= 4
