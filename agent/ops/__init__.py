"""Operations: Prometheus metrics, the systemd notify protocol and the service unit."""
