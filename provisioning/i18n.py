"""What the technician reads, in Vietnamese and English.

Every failure a provisioning can meet has a ``reason`` code; ``err.<reason>`` says what
happened and what to check, short enough to read on a ladder. Both catalogs hold every key
with the same ``{placeholders}`` (tests/provisioning/test_i18n.py checks it).

Vietnamese terms, kept the same everywhere: chứng thư (certificate), khóa (key), mã đăng ký
(enrolment token), CA của tỉnh (the provincial CA), chế độ cài đặt (provisioning mode),
sổ thiết bị (inventory); "node", "gateway", "broker", "IOC" stay as technicians say them.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any, Literal

Lang = Literal["vi", "en"]
LANGUAGES: tuple[Lang, ...] = ("vi", "en")

EN: dict[str, str] = {
    # --- steps ------------------------------------------------------------------------------
    "step.check_port": "Opening the USB serial port",
    "step.hello": "Talking to the node",
    "step.config": "Sending the configuration to the node",
    "step.keygen": "Node makes its key and certificate request",
    "step.enrol": "Getting the certificate from the provincial CA",
    "step.install": "Installing the certificates on the node",
    "step.reboot": "Restarting the node in normal mode",
    "step.wait_reading": "Waiting for the IOC to confirm a verified reading",
    "step.inventory": "Writing the inventory record",
    "step.gateway_key": "Making the gateway's key",
    "step.gateway_config": "Writing the agent configuration",
    "step.config_check": "Checking the configuration",
    "step.start_agent": "Starting the agent",
    "step.wait_birth": "Waiting for the IOC to confirm the gateway",
    "step.revoke": "Revoking the certificate",
    "step.publish_crl": "Publishing the revocation list (CRL)",
    "step.wipe": "Wiping the keys on the device",
    # --- status words -----------------------------------------------------------------------
    "status.ok": "ok",
    "status.failed": "failed",
    "status.skipped": "skipped",
    "status.resumed": "already done (resumed)",
    "status.pending": "waiting for the CA",
    "label.detail": "detail",
    # --- failures: what happened, what to check ---------------------------------------------
    "err.port_missing": "The serial port is missing or cannot be opened. Check the USB cable, the port name "
                        "(ls /dev/ttyUSB* /dev/ttyACM*) and that your user may use it (group dialout).",
    "err.no_answer": "The node does not answer. Check that it is in provisioning mode (hold BOOT while "
                     "powering it on), the port, and the baud rate (115200).",
    "err.not_provisioning_mode": "The node answers but is not in provisioning mode. Power it off, hold BOOT "
                                 "while powering it on, then run the command again.",
    "err.unplugged": "The link to the node was lost mid-way. Check the USB cable and the node's power, plug it "
                     "back in and run the same command again: it continues where it stopped.",
    "err.node_error": "The node refused the request. Read the detail below and check the firmware version "
                      "on the node.",
    "err.config_invalid": "The configuration is not valid (the detail names the field). Check the site, sensor "
                          "and broker settings you gave.",
    "err.cert_mismatch": "The certificate does not match the device's key; it was not installed. Run the "
                         "command again; if the token is used up, ask the operator for a new one.",
    "err.unreachable": "Cannot reach the enrolment service (CA). Check the network (Wi-Fi/4G), the --est "
                       "address and that the service runs; with no link use --offline-dir.",
    "err.tls_untrusted": "The enrolment service is not trusted by the provincial root. Check the --est "
                         "address (it may be the wrong server) and the --root file.",
    "err.clock": "This machine's clock looks wrong (a certificate is not yet valid or already expired). "
                 "Check the date and time (date -u), set them, then run again.",
    "err.token_unknown": "The CA does not know this enrolment token. Check that it was copied whole; ask the "
                         "operator for this device's token.",
    "err.token_expired": "The enrolment token has expired. Ask the operator for a new one "
                         "(urbanedge pki token create).",
    "err.token_used": "This enrolment token was already used. If an earlier run got the certificate, run the "
                      "same command again (it resumes); otherwise ask the operator for a new token.",
    "err.token_wrong_device": "The enrolment token is for another device. Compare the device id and the "
                              "serial number on the label with the token.",
    "err.token_malformed": "The enrolment token is malformed (it starts with uet1.). Copy it again, "
                           "without spaces or line breaks.",
    "err.csr_invalid": "The CA cannot read the device's certificate request. Run again; if it repeats, "
                       "check the firmware version.",
    "err.csr_ca": "The request asks for CA rights, which a device never gets. Check the software on the "
                  "device: it may have been tampered with.",
    "err.csr_subject": "The request names another device than the token. Check --node-id / --gateway-id "
                       "against the token.",
    "err.key_unsupported": "The CA does not accept the device's key type (P-256 expected). Check the "
                           "firmware version.",
    "err.not_authorized": "The CA refused: no valid token or certificate was shown. Check the --token value.",
    "err.server_error": "The enrolment service had an internal error. Wait a moment and run again; if it "
                        "repeats, call the operator.",
    "err.broker_refused": "The broker refused the device's certificate. Check that the broker trusts the "
                          "provincial CA, that the certificate is not revoked, and the device's clock.",
    "err.broker_unreachable": "Cannot reach the broker to watch for the IOC's confirmation. Check the network "
                              "and the --broker / --watch-broker address.",
    "err.no_reading": "No verified reading reached the IOC in time. Check the sensor wiring (RS-485 A/B), the "
                      "device's network and the broker address; the device keeps its readings for later.",
    "err.already_provisioned": "The device already holds an active certificate. New hardware in its place: "
                               "use urbanedge provision replace; to provision it again anyway add --force.",
    "err.csr_key_mismatch": "The node's request is not signed by the key it reports. Stop here: wipe the "
                            "node and install the firmware again.",
    "err.unknown_op": "The node's firmware does not know this step. Install the current firmware on the node.",
    "err.bad_frame": "The node received a damaged message. Check the USB cable (try a shorter one) and run "
                     "again.",
    "err.template_invalid": "The site template is not valid (the detail says why). Check the template file.",
    "err.agent_failed": "The agent stopped right after starting. Read the detail and the .log file next to "
                        "the configuration.",
    "err.offline_pending": "No link to the CA: the certificate request was written. Take it to the operator, "
                           "put the file they return in place, then run the same command again: {detail}",
    "err.offline_bad_file": "The certificate file from the CA cannot be read. Ask the operator for it again.",
    "err.not_in_inventory": "This device has no active certificate in the inventory. Give its serial with "
                            "--cert-serial.",
    "err.bad_serial": "The certificate serial is not hex. Copy it again from the inventory "
                      "(urbanedge provision inventory show).",
    "err.unknown_certificate": "This CA did not issue that certificate. Check --ca-dir and the serial.",
    "err.usage": "An option is missing or wrong. Check the command against --help.",
    "err.unknown": "Unexpected error: {detail}. Note this message and call the operator.",
    # --- summaries ----------------------------------------------------------------------------
    "done.provisioned": "Done: {device} is provisioned and trusted.",
    "done.decommissioned": "Done: {device} is decommissioned; the IOC now refuses its data.",
    "done.inventory": "Inventory written to {path}.",
    # --- inventory show -----------------------------------------------------------------------
    "inv.none": "No inventory record for {device}.",
    "inv.current": "Active certificate of {device}: serial {cert_serial}, SHA-256 {cert_sha256}.",
    "inv.no_current": "{device} has no active certificate.",
    "inv.missing": "No inventory at {path}.",
}

VI: dict[str, str] = {
    # --- các bước ---------------------------------------------------------------------------
    "step.check_port": "Mở cổng serial USB",
    "step.hello": "Liên lạc với node",
    "step.config": "Gửi cấu hình xuống node",
    "step.keygen": "Node tạo khóa và yêu cầu chứng thư",
    "step.enrol": "Xin cấp chứng thư từ CA của tỉnh",
    "step.install": "Cài chứng thư vào node",
    "step.reboot": "Khởi động lại node ở chế độ hoạt động",
    "step.wait_reading": "Chờ IOC xác nhận số đo hợp lệ đầu tiên",
    "step.inventory": "Ghi vào sổ thiết bị",
    "step.gateway_key": "Tạo khóa cho gateway",
    "step.gateway_config": "Ghi tệp cấu hình cho agent",
    "step.config_check": "Kiểm tra cấu hình",
    "step.start_agent": "Khởi động agent",
    "step.wait_birth": "Chờ IOC xác nhận gateway",
    "step.revoke": "Thu hồi chứng thư",
    "step.publish_crl": "Công bố danh sách thu hồi (CRL)",
    "step.wipe": "Xóa khóa trên thiết bị",
    # --- trạng thái ---------------------------------------------------------------------------
    "status.ok": "đã xong",
    "status.failed": "lỗi",
    "status.skipped": "bỏ qua",
    "status.resumed": "đã xong từ lần trước",
    "status.pending": "đang chờ CA",
    "label.detail": "chi tiết",
    # --- lỗi: chuyện gì xảy ra, cần kiểm tra gì ------------------------------------------------
    "err.port_missing": "Không thấy hoặc không mở được cổng serial. Kiểm tra cáp USB, tên cổng "
                        "(ls /dev/ttyUSB* /dev/ttyACM*) và quyền dùng cổng (nhóm dialout).",
    "err.no_answer": "Node không trả lời. Kiểm tra node đang ở chế độ cài đặt (giữ nút BOOT khi cấp nguồn), "
                     "đúng cổng và đúng tốc độ baud (115200).",
    "err.not_provisioning_mode": "Node có trả lời nhưng không ở chế độ cài đặt. Tắt nguồn node, giữ nút BOOT "
                                 "trong lúc cấp nguồn lại, rồi chạy lại lệnh.",
    "err.unplugged": "Mất kết nối với node giữa chừng. Kiểm tra cáp USB và nguồn của node, cắm lại rồi chạy "
                     "lại đúng lệnh cũ: lệnh sẽ làm tiếp từ chỗ đã dừng.",
    "err.node_error": "Node từ chối yêu cầu. Xem chi tiết bên dưới và kiểm tra phiên bản firmware trên node.",
    "err.config_invalid": "Cấu hình không hợp lệ (phần chi tiết ghi rõ trường bị sai). Kiểm tra lại thông tin "
                          "trạm, cảm biến và broker đã nhập.",
    "err.cert_mismatch": "Chứng thư không khớp với khóa của thiết bị nên chưa được cài. Chạy lại lệnh; nếu mã "
                         "đăng ký đã bị dùng, xin người vận hành mã mới.",
    "err.unreachable": "Không kết nối được dịch vụ cấp chứng thư (CA). Kiểm tra mạng (Wi-Fi/4G), địa chỉ --est "
                       "và dịch vụ có đang chạy không; nếu không có mạng, dùng --offline-dir.",
    "err.tls_untrusted": "Dịch vụ cấp chứng thư không được CA gốc của tỉnh tin cậy. Kiểm tra địa chỉ --est "
                         "(có thể nhầm máy chủ) và tệp --root.",
    "err.clock": "Đồng hồ của máy này có vẻ sai (chứng thư chưa đến hạn hoặc đã hết hạn). Kiểm tra ngày giờ "
                 "(date -u), chỉnh lại rồi chạy lại.",
    "err.token_unknown": "CA không nhận ra mã đăng ký này. Kiểm tra đã chép đủ mã chưa; xin người vận hành mã "
                         "của đúng thiết bị này.",
    "err.token_expired": "Mã đăng ký đã hết hạn. Xin người vận hành cấp mã mới (urbanedge pki token create).",
    "err.token_used": "Mã đăng ký này đã được dùng. Nếu lần chạy trước đã nhận chứng thư, chạy lại đúng lệnh cũ "
                      "(lệnh sẽ làm tiếp); nếu không, xin người vận hành mã mới.",
    "err.token_wrong_device": "Mã đăng ký này dành cho thiết bị khác. Đối chiếu mã thiết bị và số serial trên "
                              "nhãn với mã đăng ký.",
    "err.token_malformed": "Mã đăng ký sai định dạng (phải bắt đầu bằng uet1.). Chép lại, không có khoảng trắng "
                           "hay xuống dòng.",
    "err.csr_invalid": "CA không đọc được yêu cầu chứng thư của thiết bị. Chạy lại; nếu vẫn lỗi, kiểm tra phiên "
                       "bản firmware.",
    "err.csr_ca": "Yêu cầu đòi quyền CA, thiết bị không bao giờ được cấp quyền này. Kiểm tra phần mềm trên "
                  "thiết bị: có thể đã bị sửa đổi.",
    "err.csr_subject": "Yêu cầu ghi tên thiết bị khác với mã đăng ký. Kiểm tra --node-id / --gateway-id có khớp "
                       "với mã đăng ký không.",
    "err.key_unsupported": "CA không chấp nhận loại khóa của thiết bị (cần P-256). Kiểm tra phiên bản firmware.",
    "err.not_authorized": "CA từ chối: không có mã đăng ký hoặc chứng thư hợp lệ. Kiểm tra giá trị --token.",
    "err.server_error": "Dịch vụ cấp chứng thư bị lỗi nội bộ. Chờ một lát rồi chạy lại; nếu vẫn lỗi, gọi người "
                        "vận hành.",
    "err.broker_refused": "Broker từ chối chứng thư của thiết bị. Kiểm tra broker có tin cậy CA của tỉnh không, "
                          "chứng thư có bị thu hồi không, và đồng hồ của thiết bị.",
    "err.broker_unreachable": "Không kết nối được broker để chờ IOC xác nhận. Kiểm tra mạng và địa chỉ "
                              "--broker / --watch-broker.",
    "err.no_reading": "Hết thời gian chờ mà IOC chưa nhận được số đo hợp lệ nào. Kiểm tra dây cảm biến "
                      "(RS-485 A/B), mạng của thiết bị và địa chỉ broker; thiết bị vẫn giữ số đo để gửi sau.",
    "err.already_provisioned": "Thiết bị đã có chứng thư đang hiệu lực. Thay phần cứng mới thì dùng "
                               "urbanedge provision replace; muốn cài lại thì thêm --force.",
    "err.csr_key_mismatch": "Yêu cầu của node không được ký bằng khóa mà node báo. Dừng lại: xóa node và cài "
                            "lại firmware.",
    "err.unknown_op": "Firmware của node không biết bước này. Cài firmware mới nhất cho node.",
    "err.bad_frame": "Node nhận được bản tin bị hỏng. Kiểm tra cáp USB (thử cáp ngắn hơn) rồi chạy lại.",
    "err.template_invalid": "Mẫu cấu hình trạm không hợp lệ (phần chi tiết ghi rõ lý do). Kiểm tra tệp mẫu.",
    "err.agent_failed": "Agent dừng ngay sau khi khởi động. Xem chi tiết và tệp .log cạnh tệp cấu hình.",
    "err.offline_pending": "Không có kết nối tới CA: đã ghi yêu cầu chứng thư. Mang tệp đến người vận hành, đặt "
                           "tệp họ trả về đúng chỗ, rồi chạy lại đúng lệnh cũ: {detail}",
    "err.offline_bad_file": "Không đọc được tệp chứng thư từ CA. Xin người vận hành gửi lại tệp.",
    "err.not_in_inventory": "Sổ thiết bị không có chứng thư đang hiệu lực của thiết bị này. Nhập số serial "
                            "chứng thư bằng --cert-serial.",
    "err.bad_serial": "Số serial chứng thư không phải dạng hex. Chép lại từ sổ thiết bị "
                      "(urbanedge provision inventory show).",
    "err.unknown_certificate": "CA này không cấp chứng thư đó. Kiểm tra --ca-dir và số serial.",
    "err.usage": "Thiếu hoặc sai tùy chọn. Đối chiếu lệnh với --help.",
    "err.unknown": "Lỗi không xác định: {detail}. Ghi lại thông báo này và gọi người vận hành.",
    # --- tổng kết -----------------------------------------------------------------------------
    "done.provisioned": "Xong: {device} đã được cấp chứng thư và sẵn sàng hoạt động.",
    "done.decommissioned": "Xong: đã ngừng sử dụng {device}; IOC sẽ từ chối dữ liệu của thiết bị này.",
    "done.inventory": "Đã ghi sổ thiết bị ra {path}.",
    # --- xem sổ thiết bị ----------------------------------------------------------------------
    "inv.none": "Sổ thiết bị không có bản ghi nào của {device}.",
    "inv.current": "Chứng thư đang hiệu lực của {device}: số serial {cert_serial}, SHA-256 {cert_sha256}.",
    "inv.no_current": "{device} không có chứng thư nào đang hiệu lực.",
    "inv.missing": "Không có sổ thiết bị tại {path}.",
}

CATALOGS: dict[Lang, dict[str, str]] = {"en": EN, "vi": VI}


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def _lang_of(value: str) -> Lang:
    return "vi" if value.strip().lower().startswith("vi") else "en"


def pick_language(flag: str | None, env: Mapping[str, str]) -> Lang:
    """``--lang`` wins; else the first of LC_ALL, LC_MESSAGES, LANG that is set and not empty
    (POSIX precedence): ``vi``/``vi_VN.UTF-8`` give Vietnamese, anything else English."""
    if flag:
        return _lang_of(flag)
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(name)
        if value:
            return _lang_of(value)
    return "en"


class _Keep(dict[str, Any]):
    """A placeholder nobody filled stays visible as ``{name}`` rather than failing a message."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class Messages:
    def __init__(self, lang: str) -> None:
        if lang not in CATALOGS:
            raise ValueError(f"language {lang!r}: expected one of {', '.join(LANGUAGES)}")
        self.lang: Lang = "vi" if lang == "vi" else "en"
        self._catalog = CATALOGS[self.lang]

    def has(self, key: str) -> bool:
        return key in self._catalog

    def t(self, key: str, **kw: Any) -> str:
        """The message for ``key``; KeyError if no catalog has it (a programming error, and how
        callers test for an optional key)."""
        try:
            template = self._catalog[key]
        except KeyError:
            raise KeyError(f"no message {key!r}") from None
        return template.format_map(_Keep(kw))
