"""Remote configuration: a signed, encrypted ``config`` command applied on trial (docs/remote-config.md)."""
