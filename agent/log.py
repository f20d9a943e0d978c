"""Structured logs: one event per line, ``key=value`` (default) or JSON."""

from __future__ import annotations

import json
import logging
import sys
import time


class KvFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"ts={ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} " \
               f"logger={record.name} {record.getMessage()}"
        if record.exc_info:
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {"ts": round(record.created, 3),
                                  "level": record.levelname.lower(), "logger": record.name}
        msg = record.getMessage()
        # Our messages are ``event=x k=v ...``: lift the pairs into fields.
        for part in msg.split(" "):
            key, sep, val = part.partition("=")
            if sep and key.isidentifier():
                out[key] = val
        out["msg"] = msg
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str = "info", fmt: str = "kv") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KvFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter (pymodbus logs every failed frame at error level) is counted by us instead.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("amqtt").setLevel(logging.WARNING)
