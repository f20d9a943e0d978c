"""Gateway runtime: a reading is polled (``agent.poll``), buffered (``agent.buffer``),
sealed (``agent.seal``) and sent (``agent.uplink``); ``agent.app`` wires them together."""
