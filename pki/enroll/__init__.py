"""Enrolment: one-time device tokens, the EST (RFC 7030) service of the issuing CA, its HTTPS
server and client. ``tokens`` and ``est`` open no sockets; ``server`` and ``client`` do."""
