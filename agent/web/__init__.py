"""The gateway's local web page for technicians (docs/operations.md, "Local web page")."""
