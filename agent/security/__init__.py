"""Security events: what a SOC watches (docs/wire-format.md, "Security events")."""
