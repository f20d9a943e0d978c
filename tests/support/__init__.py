"""Real test peers started on free loopback ports: Mosquitto, socat pty pairs."""
