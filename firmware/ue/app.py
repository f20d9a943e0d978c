# The node app's entry point, started by the loader (main.py) from the slot it chose:
# main(slot) with slot "factory" (the code shipped with the loader), "a" or "b" (an OTA
# release, ue/ota.py). Everything here may be replaced by an update; main.py may not.
#
# storage/node.json        configuration (docs/firmware.md)
# storage/id/              identity (ue/identity.py): key made by provisioning, on the node
# storage/log/             flash log
# storage/app/             OTA slots and boot.json (ue/ota.py)
#
# A node without a certificate (a blank one included), or one whose technician asks for it
# (hal.provisioning_requested: BOOT held after reset; UE_PROVISION=1 on unix), starts in
# provisioning mode: it answers the laptop's requests on the console (ue/provision.py,
# docs/provisioning-protocol.md) until `reboot`, then starts again (ESP32: machine.reset();
# unix: in this process, into normal mode once it has its certificate).
#
# Return codes (the unix port's exit codes): 2 bad configuration or identity, 3 the console
# closed while in provisioning mode (no `reboot` came), 75 (ota.RESET) reset me: an update was
# staged, or a trial failed its self-test (the loader resets the ESP32).

import gc
import os
import sys

# On the unix port (and on boards running .py from the file system) code is loaded into the
# heap. Loading the leaves first, with a collection after each module, lets each module's
# code fill the holes its predecessors' compilation left: the free heap then stays in large
# blocks (measured: ~19 KB largest free block instead of ~3 KB), which the sealed batches and
# the OTA events need. Frozen or ROMFS code (the ESP32 deployment) is unaffected.
for _name in ("kdf", "cbor", "p256", "aead", "hal", "mqtt", "cose", "flashlog", "identity", "profiles_table",
              "modbus", "sensors", "records", "node"):
    __import__("ue." + _name)
    gc.collect()

from ue import hal, identity, node  # noqa: E402


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


def run(storage, id_dir, slot):
    try:
        cfg = node.load_config(storage + "/node.json")
    except node.ConfigError as e:
        print("event=config_invalid problem=%s" % node._q(e))
        return 2
    if "ota" in cfg:
        # Loaded (leaves first, as above) before the identity and TLS buffers.
        for name in ("http", "ota"):
            __import__("ue." + name)
            gc.collect()

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
        agent = node.Node(cfg, storage, log=_log_sink(), slot=slot)
    except identity.IdentityError as e:
        print("event=identity_invalid problem=%s" % node._q(e))
        return 2
    import asyncio

    return asyncio.run(agent.run()) or 0


def _log_sink():
    # Normal-mode log lines go to the console (the USB serial line on a board). On the unix
    # port UE_LOG=stderr sends them to stderr instead: a practice rig whose "USB cable" nobody
    # reads after provisioning would otherwise fill the pty and stall the node.
    if not hal.ESP32 and os.getenv("UE_LOG") == "stderr":
        def to_stderr(line):
            sys.stderr.write(line + "\n")

        return to_stderr
    return print


def main(slot="factory"):
    storage = hal.ensure_dir(hal.storage_dir())
    id_dir = hal.ensure_dir(storage + "/id")
    requested = hal.provisioning_requested()
    while requested or not _has_cert(id_dir):
        if not provisioning(storage, "requested" if requested else "no_certificate"):
            return 3
        requested = False  # asked for once, at boot; a node still without a certificate asks again
        gc.collect()
    return run(storage, id_dir, slot)
