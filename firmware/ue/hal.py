# Hardware layer: the few things that differ between an ESP32 and the unix port.
#
# Everything else in the node (Modbus, sealing, flash log, uplink) is written against this
# module, so the same code runs on the chip and, in tests, under the unix port with a socat
# pty standing in for the RS-485 transceiver. ESP32-only modules (machine, network) are
# imported inside the functions that need them: the unix port has no such modules.
#
# Type-checked against the ESP32 stubs (firmware/mypy.ini treats ESP32 as always true, so
# the unix branches are left to the tests that run them). Annotations cost nothing on the
# device: MicroPython compiles them away without evaluating them, and `typing` is imported
# only under TYPE_CHECKING, which mypy takes as true and the device as False.

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

ESP32 = sys.platform == "esp32"

# The ESP32 port counts wall time from 2000-01-01; the IOC and the gateway use Unix time.
_EPOCH_2000 = 946684800


class UartError(OSError):
    pass


class Uart:
    # A half-duplex serial port. read_into() waits at most timeout_ms for the first byte and
    # returns what arrived (0 on timeout); it never blocks longer, whatever the line does.
    #
    # direction: optional callable(bool) driving the RS-485 transceiver's DE/RE pin: True
    # while we transmit, False to listen. It is switched back only after the last stop bit
    # left the UART, or the slave's answer would start while our driver still holds the bus.

    def __init__(self, port: "int | str", baudrate: int = 9600, bits: int = 8, parity: "int | None" = None,
                 stop: int = 1, tx: "int | None" = None, rx: "int | None" = None,
                 direction: "Callable[[bool], None] | None" = None) -> None:
        self.baudrate = baudrate
        self.direction = direction
        self._one = bytearray(1)
        if direction is not None:
            direction(False)
        if ESP32:
            from machine import UART

            # Pins not given are left out: the ESP32 port raises on tx=None (the stubs allow it).
            pins: "dict[str, int]" = {}
            if tx is not None:
                pins["tx"] = tx
            if rx is not None:
                pins["rx"] = rx
            self._dev = UART(port, baudrate=baudrate, bits=bits, parity=parity, stop=stop,
                             timeout=0, timeout_char=0, rxbuf=512, **pins)
            self._poll = None
        else:
            import select

            # A pty (or tty) opened as a plain unbuffered file. Baud rate and framing of a
            # pty are meaningless; a real /dev/ttyUSB* needs them set with stty beforehand.
            try:
                self._dev = open(port, "r+b")
            except OSError as exc:
                raise UartError("cannot open %s: %s" % (port, exc))
            self._poll = select.poll()
            self._poll.register(self._dev, select.POLLIN)

    def write(self, data):
        if self.direction is not None:
            self.direction(True)
        n = self._dev.write(data)
        if ESP32:
            # Wait until the shift register is empty before releasing the bus.
            self._dev.flush()
        # Never flush() a pty: it raises EINVAL. An unbuffered file has nothing to flush.
        if self.direction is not None:
            self.direction(False)
        return n

    def read_into(self, buf, start, end, timeout_ms):
        # Read up to end-start bytes into buf[start:end]; returns how many arrived.
        if start >= end:
            return 0
        if ESP32:
            deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
            while not self._dev.any():
                if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                    return 0
                time.sleep_ms(1)
            mv = memoryview(buf)
            got = self._dev.readinto(mv[start:end])
            return got or 0
        # A blocking read(n) on the unix port loops until n bytes: take them one at a time,
        # each after poll() says it is there, so a short frame cannot hang us.
        n = 0
        wait = timeout_ms
        one = self._one
        while start + n < end:
            if not self._poll.poll(wait):
                break
            if self._dev.readinto(one) != 1:
                break
            buf[start + n] = one[0]
            n += 1
            wait = 0
        return n

    def discard(self):
        # Drop whatever is waiting in the receive buffer; returns the number of bytes dropped.
        dropped = 0
        scratch = bytearray(16)
        while True:
            got = self.read_into(scratch, 0, 16, 0)
            if not got:
                return dropped
            dropped += got

    def close(self):
        if ESP32:
            self._dev.deinit()
        else:
            self._poll.unregister(self._dev)
            self._dev.close()


def direction_pin(pin_no: int, active_high: bool = True) -> "Callable[[bool], None]":
    # A DE/RE callable for Uart(direction=...) on a GPIO (ESP32 only).
    from machine import Pin

    pin = Pin(pin_no, Pin.OUT, value=0 if active_high else 1)

    def drive(transmit: bool) -> None:
        pin.value(1 if transmit == active_high else 0)

    return drive


class Watchdog:
    # machine.WDT on the ESP32 (cannot be stopped once started; expiry resets the chip).
    #
    # Unix port stand-in, off unless UE_WDT=<timeout ms> is set (the tests set it short): a
    # thread checks the time of the last feed and, once the timeout passed, does what the
    # chip's watchdog does, an immediate reset without cleanup: SIGKILL of this process (the
    # tests' supervisor powers it on again, as the reset circuit would). The unix port has no
    # os._exit and no signal module; `kill -9 $PPID` run by os.system's shell names us.

    def __init__(self, timeout_ms: int = 30000) -> None:
        self._wdt = None
        self._fed = time.ticks_ms()
        self._timeout = timeout_ms
        if ESP32:
            from machine import WDT

            self._wdt = WDT(timeout=timeout_ms)
        elif os.getenv("UE_WDT"):
            import _thread

            self._timeout = int(os.getenv("UE_WDT") or "0") or timeout_ms
            _thread.start_new_thread(self._watch, ())

    def _watch(self):
        # No allocation in this loop: the unix port's threads share the heap without a lock.
        while True:
            time.sleep_ms(200)
            if time.ticks_diff(time.ticks_ms(), self._fed) > self._timeout:
                print("event=watchdog_expired")
                os.system("kill -9 $PPID")
                return

    def feed(self):
        self._fed = time.ticks_ms()
        if self._wdt is not None:
            self._wdt.feed()


def ticks_ms():
    return time.ticks_ms()


def ticks_diff(a, b):
    return time.ticks_diff(a, b)


def ticks_add(t, delta):
    return time.ticks_add(t, delta)


def sleep_ms(ms: int) -> None:
    time.sleep_ms(ms)


def wall_time():
    # Seconds since 1970-01-01 UTC (the ESP32 must have synced its RTC, e.g. with ntptime).
    t = time.time()
    if time.gmtime(0)[0] == 2000:
        t += _EPOCH_2000
    return t


def storage_dir() -> str:
    # Where the flash log and keys live: the littlefs root on the chip; $UE_STORAGE (or the
    # current directory) on unix, so each test gets its own.
    if ESP32:
        return "/data"
    return os.getenv("UE_STORAGE") or "."


def ensure_dir(path: str) -> str:
    try:
        os.mkdir(path)
    except OSError:
        pass  # EEXIST: fine; anything else shows up on first write
    return path


def network_up(ssid: "str | None" = None, password: "str | None" = None, timeout_ms: int = 20000) -> bool:
    # Bring the station interface up; True once it has an address. Unix: the host's network.
    if not ESP32:
        return True
    import network

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if wlan.isconnected():
        return True
    if ssid is None:
        return False
    wlan.connect(ssid, password)
    deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
    while not wlan.isconnected():
        if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
            return False
        time.sleep_ms(100)
    return True


def provisioning_requested(window_ms: int = 2000) -> bool:
    # Whether the technician asked for provisioning mode at this boot (a node without a
    # certificate enters it anyway). Unix port: UE_PROVISION=1.
    #
    # ESP32: the BOOT button (GPIO0, pulled up, low while pressed) held during the first
    # window_ms after boot. Not while the chip comes out of reset: GPIO0 is a strapping pin,
    # and low at that moment starts the ROM's serial downloader instead of MicroPython. So:
    # press and release EN (reset), then hold BOOT for a second.
    if not ESP32:
        return os.getenv("UE_PROVISION") == "1"
    import machine

    if machine.reset_cause() in (machine.WDT_RESET, machine.DEEPSLEEP_RESET):
        return False  # nobody pressed anything: do not delay the node's recovery
    pin = machine.Pin(0, machine.Pin.IN, machine.Pin.PULL_UP)
    deadline = time.ticks_add(time.ticks_ms(), window_ms)
    low = 0
    while time.ticks_diff(deadline, time.ticks_ms()) > 0:
        # 50 ms low in a row: a press, not a glitch on the line
        low = low + 1 if pin.value() == 0 else 0
        if low >= 5:
            return True
        time.sleep_ms(10)
    return False
