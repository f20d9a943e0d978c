# Entry point of the node agent (main.py at the root of the board's file system, run at boot;
# on the unix port: `micropython firmware/main.py` with UE_STORAGE naming the storage folder).
#
# storage/node.json        configuration (docs/firmware.md)
# storage/id/              identity (ue/identity.py): key made by provisioning, on the node
# storage/log/             flash log
#
# A node without a certificate (a blank one included), or one whose technician asks for it
# (hal.provisioning_requested: BOOT held after reset; UE_PROVISION=1 on unix), starts in
# provisioning mode: it answers the laptop's requests on the console (ue/provision.py,
# docs/provisioning-protocol.md) until `reboot`, then starts again (ESP32: machine.reset();
# unix: in this process, into normal mode once it has its certificate).
#
# Exit codes (unix port): 2 bad configuration or identity, 3 the console closed while in
# provisioning mode (no `reboot` came).

import os
import sys

from ue import hal, identity, node


def _has_cert(id_dir):
    try:
        os.stat(id_dir + "/" + identity.CERT_FILE)
        return True
    except OSError:
        return False


def provisioning(storage, why):
    # -> True when the laptop sent `reboot`, False when the console closed first.
    print("event=provisioning_mode reason=%s" % why)
    from ue import provision

    rd, wr = provision.console()
    how = provision.serve(storage, rd, wr)
    if how != "reboot":
        try:
            print("event=provisioning_ended reason=%s" % how)
        except OSError:
            pass  # the console is what went away
        return False
    if hal.ESP32:
        import machine

        hal.sleep_ms(200)  # let the answer leave the USB-serial bridge before the reset
        machine.reset()
    return True


def run(storage, id_dir):
    try:
        cfg = node.load_config(storage + "/node.json")
    except node.ConfigError as e:
        print("event=config_invalid problem=%s" % node._q(e))
        return 2
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
        agent = node.Node(cfg, storage, log=_log_sink())
    except identity.IdentityError as e:
        print("event=identity_invalid problem=%s" % node._q(e))
        return 2
    import asyncio

    asyncio.run(agent.run())
    return 0


def _log_sink():
    # Normal-mode log lines go to the console (the USB serial line on a board). On the unix
    # port UE_LOG=stderr sends them to stderr instead: a practice rig whose "USB cable" nobody
    # reads after provisioning would otherwise fill the pty and stall the node.
    if not hal.ESP32 and os.getenv("UE_LOG") == "stderr":
        def to_stderr(line):
            sys.stderr.write(line + "\n")

        return to_stderr
    return print


def main():
    storage = hal.ensure_dir(hal.storage_dir())
    id_dir = hal.ensure_dir(storage + "/id")
    requested = hal.provisioning_requested()
    while requested or not _has_cert(id_dir):
        if not provisioning(storage, "requested" if requested else "no_certificate"):
            return 3
        requested = False  # asked for once, at boot; a node still without a certificate asks again
        import gc

        gc.collect()
    return run(storage, id_dir)


if __name__ == "__main__":
    code = main()
    if code and not hal.ESP32:
        sys.exit(code)
