"""Exception tree for everything that can go wrong between the gateway and a field device.

The poller only needs to tell *transient* device trouble (retry with backoff, count,
keep running) from *configuration* trouble (a profile that cannot work: fail at start).
"""

from __future__ import annotations


class DriverError(Exception):
    """Base of all driver errors."""


class ProfileError(DriverError):
    """A device profile file is malformed. The message names file, field and problem."""

    def __init__(self, file: str, field: str, problem: str) -> None:
        self.file = file
        self.field = field
        self.problem = problem
        super().__init__(f"{file}: {field}: {problem}")


class DeviceError(DriverError):
    """A transient failure talking to one device; the poller retries with backoff."""

    reason: str = "error"


class DeviceTimeout(DeviceError):
    """No (complete) response within the request timeout."""

    reason = "timeout"


class DeviceExceptionResponse(DeviceError):
    """The device answered with a Modbus exception code."""

    reason = "exception"

    def __init__(self, code: int, message: str = "") -> None:
        self.code = code
        super().__init__(message or f"modbus exception code {code}")


class FrameError(DeviceError):
    """Garbage, a bad CRC/checksum or a malformed response."""

    reason = "bad_frame"


class ConnectionLost(DeviceError):
    """The transport (TCP connection or serial port) is down or could not be opened."""

    reason = "connection"
