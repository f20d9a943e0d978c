"""The pages' HTML (pure): both languages, escaping, accessibility structure, no inline code."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from agent.web.i18n import LANGS, Lang
from agent.web.render import DeviceRow, OutboxView, PageContext, StatusView, error_page, login_page, status_page


class Tree(HTMLParser):
    """Collects start tags with their attributes (the page has no inline script to skip)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def parse(html: str) -> Tree:
    tree = Tree()
    tree.feed(html)
    return tree


EVIL = '<script>alert("x")</script>'
VIEW = StatusView(
    gateway_id="gw-dn-001", version="1.2.3", started=1000.0,
    devices=[
        DeviceRow(id="sl-1", bus="lan", kind="streetlight", online=True, last_poll=1995.0, last_quality="good",
                  polls=10, good=9, errors={"timeout": 1}, units={"voltage": "V"}),
        DeviceRow(id="fs-2", bus="rs485", kind="flood_sensor", online=False, last_poll=None,
                  last_quality=EVIL, polls=3, good=0, errors={}),
        DeviceRow(id="wm-3", bus="rs485", kind="water_meter", online=False, last_poll=1800.0,
                  last_quality="error", polls=3, good=0, errors={"timeout": 3}),
    ],
    outbox=OutboxView(depth={"alarm": 1, "event": 2, "telemetry": 30}, used_bytes=5_000_000,
                      max_bytes=300_000_000, oldest_ts=1900.0, dropped_total=0),
    uplink_state="connecting", uplink={"acked_records": 7, "reconnects": 2, "last_error": EVIL},
    update={"committed": "a", "release": "1.2.3", "counter": 4,
            "trial": {"slot": "b", "release": "1.3.0", "tries": 1}},
    update_state="trial",
    last_command={"id": "ab12", "cmd": "reboot", "state": "rejected", "reason": "expired", "ts": 1990.0},
)
SERIES = {"sl-1": {"voltage": [(1990.0 + i, 230.0 + i) for i in range(5)], "lamp_on": [(1990.0, 1.0)]}}


def ctx(lang: Lang, **kw: object) -> PageContext:
    return PageContext(lang=lang, now=2000.0, fmt_time=lambda ts: f"T{ts:.0f}", **kw)  # type: ignore[arg-type]


def pages(lang: Lang) -> list[str]:
    return [
        status_page(ctx(lang, user="tech", csrf="CSRF-TOKEN"), VIEW, SERIES, history_size=60, refresh=10),
        status_page(ctx(lang, user="tech", csrf="C"), StatusView("gw", "1", 0, [], None, None, {}, {}, "", None),
                    {}, history_size=60, refresh=0),
        login_page(ctx(lang), "gw-dn-001", "FORM", message="x", error=True, username=EVIL),
        error_page(ctx(lang), "not_found"),
    ]


@pytest.mark.parametrize("lang", LANGS)
def test_every_page_has_lang_title_skip_link_main_and_one_h1(lang: Lang) -> None:
    for html in pages(lang):
        tree = parse(html)
        assert tree.tags[0] == ("html", {"lang": lang})
        assert tree.find("title") and tree.find("main", id="main")
        first_link = tree.find("a")[0]
        assert first_link == {"class": "skip", "href": "#main"}
        assert len(tree.find("h1")) == 1
        assert tree.find("nav", **{"aria-label": "Ngôn ngữ" if lang == "vi" else "Language"})


@pytest.mark.parametrize("lang", LANGS)
def test_no_inline_script_style_or_handlers(lang: Lang) -> None:
    # What the Content-Security-Policy would block anyway; a page that relied on it would break.
    for html in pages(lang):
        tree = parse(html)
        assert all(a.get("src") for a in tree.find("script"))
        assert not tree.find("style")
        for _, attrs in tree.tags:
            assert "style" not in attrs and not any(k.startswith("on") for k in attrs)


def test_values_from_devices_and_the_uplink_are_escaped() -> None:
    for lang in LANGS:
        for html in pages(lang):
            assert EVIL not in html
    assert "&lt;script&gt;" in pages("en")[0]


def test_status_page_shows_what_urbanedge_status_shows() -> None:
    text = " ".join(parse(pages("en")[0]).text)
    for fact in ("sl-1", "fs-2", "Online", "OFFLINE", "5 s ago", "never", "timeout 1", "9", "Connecting",
                 "33: alarms 1 · events 2 · telemetry 30", "5.0 MB of 300 MB (2%)", "T1900 (100 s ago)", "3 min ago",
                 "reboot: rejected", "Reason: expired", "1.2.3", "1.3.0 in slot b (boot 1)", "0 h 16 min"):
        assert fact in text, fact
    vi = " ".join(parse(pages("vi")[0]).text)
    for fact in ("Trực tuyến", "MẤT KẾT NỐI", "5 giây trước", "chưa bao giờ", "Đang kết nối", "Lý do: expired",
                 "3 phút trước"):
        assert fact in vi, fact


def test_tables_have_header_scopes_and_charts_a_table_alternative() -> None:
    html = pages("en")[0]
    tree = parse(html)
    assert all(a.get("scope") in ("col", "row") for a in tree.find("th"))
    svg = tree.find("svg", id="chart-sl-1-voltage")[0]
    assert svg["role"] == "img"
    assert tree.find("details", id="tbl-sl-1-voltage")
    assert len(re.findall(r'class="pt"', html)) == 6
    assert "voltage (V)" in html  # the unit from the profile


def test_forms_are_labelled_and_carry_their_tokens() -> None:
    login = parse(pages("vi")[2])
    for field in ("username", "password"):
        assert login.find("label", **{"for": field}) and login.find("input", id=field)
    assert login.find("input", type="hidden", name="form", value="FORM")
    assert login.find("p", role="alert")
    status = parse(pages("en")[0])
    assert status.find("input", type="hidden", name="csrf", value="CSRF-TOKEN")
    assert status.find("label", **{"for": "auto-refresh"}) and status.find("input", id="auto-refresh")
    assert not parse(pages("en")[1]).find("input", id="auto-refresh")  # refresh = 0: no control
