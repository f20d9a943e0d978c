"""The gateway's side of an update: TUF refresh, download, A/B slots, health check, status."""
