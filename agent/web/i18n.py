"""[pure] Every visible string of the local web page, in Vietnamese and English, and the
choice of language for a request.

One catalogue, one key per string: a test checks that every key has both languages and
the same ``{placeholders}`` in each, so a string added in one language only fails CI
instead of showing a key to a technician. Vietnamese is the default (the people on site);
the technician's choice (a link on every page, remembered in a cookie) wins over the
browser's ``Accept-Language``.
"""

from __future__ import annotations

from typing import Literal

Lang = Literal["vi", "en"]
LANGS: tuple[Lang, ...] = ("vi", "en")
LANG_NAMES: dict[Lang, str] = {"vi": "Tiếng Việt", "en": "English"}

# key -> (vi, en)
CATALOGUE: dict[str, tuple[str, str]] = {
    "app_title": ("Cổng IoT {gateway}", "IoT gateway {gateway}"),
    "skip_link": ("Chuyển đến nội dung chính", "Skip to main content"),
    "language": ("Ngôn ngữ", "Language"),
    "switch_to": ("Chuyển sang {name}", "Switch to {name}"),
    # login
    "login_title": ("Đăng nhập", "Sign in"),
    "login_intro": ("Trang dành cho kỹ thuật viên bảo trì. Đăng nhập bằng tài khoản được cấp cho cổng này.",
                    "For maintenance technicians. Sign in with the account set up on this gateway."),
    "username": ("Tên đăng nhập", "User name"),
    "password": ("Mật khẩu", "Password"),
    "login_button": ("Đăng nhập", "Sign in"),
    "login_failed": ("Tên đăng nhập hoặc mật khẩu không đúng.", "Wrong user name or password."),
    "login_throttled": ("Quá nhiều lần đăng nhập sai. Thử lại sau {seconds} giây.",
                        "Too many failed sign-ins. Try again in {seconds} seconds."),
    "login_expired": ("Biểu mẫu đã hết hạn. Vui lòng thử lại.", "The form has expired. Please try again."),
    "logged_out": ("Bạn đã đăng xuất.", "You have signed out."),
    "logout_button": ("Đăng xuất", "Sign out"),
    "signed_in_as": ("Đăng nhập với tên {user}", "Signed in as {user}"),
    # status page
    "status_heading": ("Trạng thái cổng {gateway}", "Status of gateway {gateway}"),
    "updated_at": ("Cập nhật lúc {time}", "Updated at {time}"),
    "refresh": ("Làm mới", "Refresh"),
    "auto_refresh": ("Tự động làm mới mỗi {seconds} giây", "Refresh automatically every {seconds} seconds"),
    "software_heading": ("Phần mềm", "Software"),
    "version": ("Phiên bản đang chạy", "Running version"),
    "duration": ("{h} giờ {m} phút", "{h} h {m} min"),
    "uptime": ("Thời gian hoạt động", "Running for"),
    "slot": ("Khe đã xác nhận", "Committed slot"),
    "release_counter": ("Bộ đếm phiên bản", "Release counter"),
    "on_trial": ("Đang thử", "On trial"),
    "trial_value": ("{release} ở khe {slot} (lần khởi động {tries})", "{release} in slot {slot} (boot {tries})"),
    "update_state": ("Trạng thái cập nhật", "Update state"),
    "update_unreadable": ("Không đọc được trạng thái cập nhật: {error}", "Update state unreadable: {error}"),
    "devices_heading": ("Thiết bị", "Devices"),
    "no_devices": ("Chưa cấu hình thiết bị nào.", "No devices are configured."),
    "col_device": ("Thiết bị", "Device"),
    "col_bus": ("Đường truyền", "Bus"),
    "col_kind": ("Loại", "Type"),
    "col_state": ("Tình trạng", "State"),
    "col_last_poll": ("Lần đọc cuối", "Last poll"),
    "col_quality": ("Chất lượng", "Quality"),
    "col_polls": ("Số lần đọc (thành công)", "Polls (good)"),
    "col_errors": ("Lỗi", "Errors"),
    "state_online": ("Trực tuyến", "Online"),
    "state_offline": ("MẤT KẾT NỐI", "OFFLINE"),
    "state_unknown": ("Chưa rõ", "Unknown"),
    "never": ("chưa bao giờ", "never"),
    "seconds_ago": ("{n} giây trước", "{n} s ago"),
    "minutes_ago": ("{n} phút trước", "{n} min ago"),
    "hours_ago": ("{n} giờ trước", "{n} h ago"),
    "none": ("không", "none"),
    "outbox_heading": ("Bộ đệm gửi đi", "Outbox (buffer)"),
    "outbox_records": ("Bản ghi chờ gửi", "Records waiting"),
    "outbox_by_priority": ("Cảnh báo {alarm} · sự kiện {event} · đo đạc {telemetry}",
                           "alarms {alarm} · events {event} · telemetry {telemetry}"),
    "outbox_size": ("Dung lượng", "Size"),
    "outbox_size_value": ("{used} MB trên {max} MB ({pct}%)", "{used} MB of {max} MB ({pct}%)"),
    "outbox_oldest": ("Bản ghi cũ nhất chưa gửi", "Oldest unsent record"),
    "outbox_dropped": ("Bản ghi đã loại bỏ (bộ đệm đầy)", "Records dropped (buffer full)"),
    "uplink_heading": ("Kết nối lên trung tâm (IOC)", "Uplink to the operations centre (IOC)"),
    "uplink_state": ("Trạng thái", "State"),
    "uplink_online": ("Đã kết nối", "Connected"),
    "uplink_connecting": ("Đang kết nối", "Connecting"),
    "uplink_offline": ("Mất kết nối", "Disconnected"),
    "uplink_acked": ("Bản ghi đã được xác nhận", "Records acknowledged"),
    "uplink_reconnects": ("Số lần kết nối lại", "Reconnections"),
    "uplink_last_error": ("Lỗi gần nhất", "Last error"),
    "command_heading": ("Lệnh gần nhất từ trung tâm", "Last command from the IOC"),
    "no_command": ("Chưa nhận lệnh nào kể từ khi khởi động.", "No command received since the agent started."),
    "command_value": ("{cmd}: {state}", "{cmd}: {state}"),
    "command_reason": ("Lý do: {reason}", "Reason: {reason}"),
    "command_at": ("Lúc {time}", "At {time}"),
    # chart
    "charts_heading": ("Số đo gần đây", "Recent readings"),
    "charts_intro": ("{n} số đo gần nhất của mỗi thiết bị, lưu trong bộ nhớ từ khi khởi động.",
                     "The last {n} readings of each device, kept in memory since the agent started."),
    "no_readings": ("Chưa có số đo nào.", "No readings yet."),
    "chart_title": ("{device}: {point}", "{device}: {point}"),
    "chart_desc": ("Biểu đồ đường {count} số đo từ {start} đến {end}; "
                   "nhỏ nhất {min}, lớn nhất {max}, mới nhất {last}.",
                   "Line chart of {count} readings from {start} to {end}; "
                   "minimum {min}, maximum {max}, latest {last}."),
    "show_table": ("Xem bảng số liệu của {point}", "Show the data table of {point}"),
    "col_time": ("Thời gian", "Time"),
    "col_value": ("Giá trị", "Value"),
    "latest_value": ("Mới nhất: {value}", "Latest: {value}"),
    # errors
    "not_found": ("Không tìm thấy trang.", "Page not found."),
    "bad_request": ("Yêu cầu không hợp lệ.", "Bad request."),
    "back_home": ("Về trang trạng thái", "Back to the status page"),
}


def t(lang: Lang, key: str, **fmt: object) -> str:
    """The string ``key`` in ``lang``, formatted. A missing key is a programming error (KeyError)."""
    vi, en = CATALOGUE[key]
    text = vi if lang == "vi" else en
    return text.format(**fmt) if fmt else text


def _parse_accept_language(header: str) -> list[tuple[float, str]]:
    out: list[tuple[float, str]] = []
    for i, part in enumerate(header.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        if tag and 0 < q <= 1:
            # Ties keep header order: subtract a tiny amount per position.
            out.append((q - i * 1e-6, tag.lower()))
    return sorted(out, reverse=True)


def as_lang(value: str | None) -> Lang | None:
    if value == "vi":
        return "vi"
    if value == "en":
        return "en"
    return None


def negotiate(query: str | None, cookie: str | None, accept_language: str | None, default: Lang) -> Lang:
    """Explicit choice (link) > remembered choice (cookie) > browser preference > ``default``."""
    for explicit in (as_lang(query), as_lang(cookie)):
        if explicit is not None:
            return explicit
    for _, tag in _parse_accept_language(accept_language or ""):
        primary = tag.split("-", 1)[0]
        lang = as_lang(primary)
        if lang is not None:
            return lang
        if primary == "*":
            return default
    return default
