# Entry point of the node agent (main.py at the root of the board's file system, run at boot;
# on the unix port: `micropython firmware/main.py` with UE_STORAGE naming the storage folder).
#
# storage/node.json        configuration (docs/firmware.md)
# storage/id/              identity (ue/identity.py): key made here on first boot
# storage/log/             flash log
#
# Exit codes (unix port): 2 bad configuration, 3 not provisioned yet (the key and the
# certificate request were made and are waiting to be certified).

import sys

from ue import hal, identity, node


def main():
    storage = hal.ensure_dir(hal.storage_dir())
    try:
        cfg = node.load_config(storage + "/node.json")
    except node.ConfigError as e:
        print("event=config_invalid problem=%s" % node._q(e))
        return 2
    id_dir = hal.ensure_dir(storage + "/id")
    d, pub = identity.load_or_create_key(id_dir)
    try:
        with open(id_dir + "/" + identity.CERT_FILE, "rb"):
            pass
    except OSError:
        identity.write_csr(id_dir, d, pub, cfg["node_id"], cfg.get("serial"))
        print("event=node_unprovisioned csr=%s/%s" % (id_dir, identity.CSR_FILE))
        return 3
    d = pub = None
    wifi = cfg.get("wifi", {})
    if not hal.network_up(wifi.get("ssid"), wifi.get("password")):
        print("event=network_down ssid=%s" % wifi.get("ssid"))
    elif hal.ESP32:
        # Readings carry Unix time and certificates are checked against it: the RTC must be set
        # before the first reading. A failure is retried by the next boot (the watchdog's).
        try:
            import ntptime

            ntptime.settime()
        except Exception as e:  # no NTP server reachable: keep going, times will be wrong
            print("event=ntp_failed reason=%s" % node._q(repr(e)))
    try:
        agent = node.Node(cfg, storage)
    except identity.IdentityError as e:
        print("event=identity_invalid problem=%s" % node._q(e))
        return 2
    import asyncio

    asyncio.run(agent.run())
    return 0


if __name__ == "__main__":
    code = main()
    if code and not hal.ESP32:
        sys.exit(code)
