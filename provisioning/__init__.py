"""Field provisioning: a blank gateway or node to a trusted device of the provincial network
(issue 5). ``serial_proto`` and ``node_link`` are the laptop's side of the USB-serial protocol
the node firmware speaks in provisioning mode (docs/provisioning-protocol.md)."""
