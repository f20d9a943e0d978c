"""The laptop's end of the USB serial line to a node in provisioning mode.

``NodeLink.open(port)`` opens the port with pyserial (a pty in the tests, ``/dev/ttyUSB0`` in
the field); ``request(op, **args)`` sends one frame and returns the node's answer (the dict,
``ok`` is true) or raises ``NodeLinkError`` whose ``reason`` the technician's UI translates:

- ``port_missing``: the port cannot be opened; ``detail`` says why (no such device, permission,
  busy, not a serial device)
- ``no_answer``: nothing came back (node not in provisioning mode and silent, wrong port or
  baud rate, node hung)
- ``not_provisioning_mode``: the port talks, but not our protocol: a REPL prompt, or only
  ``event=`` log lines of a node running normally
- ``unplugged``: the port vanished while in use
- ``node_error``: the node refused the request; ``node_reason`` carries its code
  (``config_invalid``, ``cert_mismatch``, ... docs/provisioning-protocol.md)

Framing lives in ``provisioning.serial_proto``; this module is only the I/O around it.
"""

from __future__ import annotations

import contextlib
import errno
import random
import time
from collections import deque
from types import TracebackType
from typing import Any

import serial

from provisioning.serial_proto import FrameDecoder, encode

# How long one read may block: the deadline is checked between reads. A read returns as soon
# as a byte is there, so this bounds only how late a timeout is noticed.
_READ_SLICE = 0.1
_SAMPLE = 400
DEFAULT_MAX_FRAME = 4096


class NodeLinkError(Exception):
    def __init__(self, reason: str, detail: str = "", *, node_reason: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.node_reason = node_reason


def _open_problem(port: str, exc: BaseException) -> str:
    """What the technician should hear about a port that would not open."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.ENOENT or "No such file" in text:
        return f"no such device: {port} (cable plugged in? which /dev/ttyUSB* or /dev/ttyACM* appeared?)"
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        return f"permission denied on {port} (add the user to the dialout group and log in again)"
    if code == errno.EBUSY or "exclusively lock" in text or "Device or resource busy" in text:
        return f"{port} is busy: another program has it open (close mpremote, screen, minicom)"
    if code in (errno.ENOTTY, errno.EINVAL) or "Inappropriate ioctl" in text:
        return f"{port} is not a serial device"
    return f"cannot open {port}: {text}"


def _readable(data: bytes) -> bool:
    """Mostly text (a log, a prompt) rather than line noise (a wrong baud rate's garbage)."""
    if not data:
        return False
    text = data.decode("utf-8", errors="replace")
    good = sum(1 for ch in text if ch.isprintable() or ch in "\r\n\t")
    return good >= 0.8 * len(text)


def silence_verdict(received: bytes, *, answered_before: bool, echoed: bool, timeout: float,
                    baudrate: int) -> NodeLinkError:
    """The error for a request that got no answer, from what the line carried meanwhile."""
    sample = received[-_SAMPLE:].decode("utf-8", errors="replace").strip()
    lines = sample.splitlines()
    if echoed or ">>>" in sample:
        return NodeLinkError("not_provisioning_mode",
                             "a MicroPython REPL answers on this port, not the node's firmware "
                             f"(main.py not running?): {sample[-120:]!r}")
    # A node in provisioning mode logs too (event=provisioning_...), but always answers after.
    normal = [line for line in lines if "event=" in line and "event=provisioning" not in line]
    if normal:
        return NodeLinkError("not_provisioning_mode",
                             "the node runs in normal mode (it logs, but does not answer): reset it and "
                             f"hold BOOT to enter provisioning mode; last: {normal[-1][-160:]!r}")
    if answered_before:
        return NodeLinkError("no_answer", f"the node answered earlier but not within {timeout:g} s "
                                          "(twice): reset, or hanging?")
    if _readable(received):
        return NodeLinkError("not_provisioning_mode",
                             f"something answers on this port, not in the provisioning protocol: {sample[-160:]!r}")
    if received:
        return NodeLinkError("no_answer", f"only unreadable bytes came back ({len(received)}): wrong baud rate "
                                          f"(using {baudrate})?")
    return NodeLinkError("no_answer", f"nothing came back within {timeout:g} s (twice): is the node in "
                                      "provisioning mode, and is this its port?")


class NodeLink:
    def __init__(self, ser: Any, port: str, *, baudrate: int, timeout: float) -> None:
        self._ser = ser
        self.port = port
        self.baudrate = baudrate
        self.timeout = timeout
        self._decoder = FrameDecoder()
        self._frames: deque[dict[str, Any]] = deque()
        # Ids start at random so an answer left over from an earlier session on the same node
        # cannot be taken for one of ours (and the node's repeat-cache cannot replay it).
        self._next_id = random.randint(1, 1 << 24)
        self._answered = False
        self._console: deque[str] = deque(maxlen=500)
        self._noise_seen = 0
        # The node's longest request line: its `hello` says; until then the firmware's default.
        self.max_frame = DEFAULT_MAX_FRAME
        self.sent = 0  # frames written (a test waits on this to know a request is under way)
        self.dropped = 0  # answers to ids we were not waiting for

    @classmethod
    def open(cls, port: str, *, baudrate: int = 115200, timeout: float = 5.0) -> NodeLink:
        ser = serial.Serial()
        ser.port = port
        ser.baudrate = baudrate
        ser.timeout = _READ_SLICE
        ser.write_timeout = timeout
        ser.exclusive = True
        # DTR and RTS drive EN and GPIO0 through the auto-reset circuit of most ESP32 boards:
        # left asserted by the open they may reset the node out of provisioning mode.
        ser.dtr = False
        ser.rts = False
        try:
            ser.open()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise NodeLinkError("port_missing", _open_problem(port, exc)) from exc
        link = cls(ser, port, baudrate=baudrate, timeout=timeout)
        try:
            # What the port held before we came (boot banner, old answers) is not for us.
            ser.reset_input_buffer()
        except (serial.SerialException, OSError) as exc:
            link.close()
            raise NodeLinkError("unplugged", f"{port}: {exc}") from exc
        return link

    def __enter__(self) -> NodeLink:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        # A port already gone has nothing left to release.
        with contextlib.suppress(serial.SerialException, OSError):
            self._ser.close()

    # -- requests ------------------------------------------------------------------------------

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send ``op`` and return the node's answer (``ok`` true). A request that times out, or
        that the node reports damaged on the way (``bad_frame``), is sent once more with the same
        id: the node answers a repeated id from its cache rather than doing it twice."""
        if "id" in args:
            raise ValueError("id is chosen by the link")
        files = args.get("files")
        if op == "install" and isinstance(files, dict) and len(files) > 1 and \
                len(encode({"id": self._next_id, "op": op, **args})) > self.max_frame:
            # Longer than the node's line buffer: one file per install (each checked as ever).
            installed: list[str] = []
            for name, data in files.items():
                installed += self.request("install", **{**args, "files": {name: data}})["installed"]
            return {"ok": True, "installed": installed}
        answer = self._request(op, args)
        if op == "hello" and isinstance(answer.get("max_frame"), int):
            self.max_frame = answer["max_frame"]
        return answer

    def _request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        rid = self._next_id
        self._next_id += 1
        frame = encode({"id": rid, "op": op, **args})
        received = bytearray()
        echoed = False
        answer: dict[str, Any] | None = None
        for attempt in (1, 2):
            self._write(frame)
            answer, more, echo = self._await(rid, time.monotonic() + self.timeout)
            received += more
            echoed = echoed or echo
            if answer is None:
                continue
            if answer.get("ok") is True:
                return answer
            if answer.get("reason") == "bad_frame" and attempt == 1:
                continue
            break
        if answer is None:
            raise silence_verdict(bytes(received), answered_before=self._answered, echoed=echoed,
                                  timeout=self.timeout, baudrate=self.baudrate)
        reason = str(answer.get("reason") or "unknown")
        raise NodeLinkError("node_error", f"{op}: {reason}: {answer.get('detail', '')}", node_reason=reason)

    def _write(self, frame: bytes) -> None:
        try:
            self._ser.write(frame)
            self._ser.flush()
        except serial.SerialTimeoutException as exc:
            # Nobody drains the line (flow control held, the bridge wedged): as good as gone.
            raise NodeLinkError("no_answer", f"{self.port}: the request could not be written: {exc}") from exc
        except (serial.SerialException, OSError) as exc:
            raise NodeLinkError("unplugged", f"{self.port}: {exc}") from exc
        self.sent += 1

    def _read(self) -> bytes:
        try:
            return bytes(self._ser.read(max(1, self._ser.in_waiting)))
        except (serial.SerialException, OSError) as exc:
            raise NodeLinkError("unplugged", f"{self.port}: {exc}") from exc

    def _pump(self) -> bytes:
        """One read: frames decoded into the queue, console lines kept; returns the raw bytes."""
        data = self._read()
        if data:
            self._frames.extend(self._decoder.feed(data))
            noise = list(self._decoder.noise)
            fresh = self._decoder.noise_lines - self._noise_seen
            self._noise_seen = self._decoder.noise_lines
            for line in noise[len(noise) - min(fresh, len(noise)):]:
                self._console.append(line.decode("utf-8", errors="replace"))
        return data

    def _await(self, rid: int, deadline: float) -> tuple[dict[str, Any] | None, bytes, bool]:
        # -> (the answer to rid or None at the deadline, bytes seen meanwhile, our request echoed)
        seen = bytearray()
        echoed = False
        while True:
            while self._frames:
                frame = self._frames.popleft()
                if "ok" not in frame:
                    # A request, not an answer: the port echoes what we write (REPL, terminal).
                    echoed = echoed or frame.get("id") == rid
                    continue
                if frame.get("id") != rid:
                    self.dropped += 1
                    continue
                self._answered = True
                return frame, bytes(seen), echoed
            if time.monotonic() >= deadline:
                return None, bytes(seen), echoed
            seen += self._pump()
            del seen[:-4096]

    # -- the node's console --------------------------------------------------------------------

    def console_lines(self) -> list[str]:
        """The node's own lines (log, banner) seen so far and not yet taken."""
        out = list(self._console)
        self._console.clear()
        return out

    def poll_console(self) -> list[str]:
        """One read of the line (at most the port's timeout), then the node's lines not yet taken:
        what a waiting installer watches after the reboot (connect failures, for one)."""
        self._pump()
        return self.console_lines()

    def wait_console(self, needle: str, timeout: float) -> str:
        """The first console line containing ``needle`` (e.g. ``event=node_started`` after a
        reboot), reading until ``timeout``; NodeLinkError("no_answer") if none came."""
        deadline = time.monotonic() + timeout
        while True:
            while self._console:
                line = self._console.popleft()
                if needle in line:
                    return line
            if time.monotonic() >= deadline:
                raise NodeLinkError("no_answer", f"the node did not print {needle!r} within {timeout:g} s")
            self._pump()
