# The loader: main.py at the root of the board's file system, run at boot (unix port:
# `micropython firmware/main.py` with UE_STORAGE naming the storage folder). It is never
# updated over the air, so it stays small and trusts nothing it reads.
#
# It picks the app slot from <storage>/app/boot.json (layout: ue/ota.py) and runs ue.app from
# it: "factory" (the ue/ shipped next to this file), or "a"/"b" (an OTA release).
# - missing or unreadable boot.json, or a slot without ue/app.py -> factory, never a crash;
# - a pending trial: when it already had MAX_TRIES boots, or the app marked it failed, fall
#   back to the committed slot, clear the trial and leave a "rolled_back" note the app
#   reports; otherwise count this boot (persisted BEFORE the new code runs) and run it.
# A crash of an OTA slot's app ends in a reset (machine.reset(); unix: exit code 75), so the
# trial counter decides, as it does after a watchdog reset.
#
# Exit codes (unix port): those of ue/app.py (2 bad configuration or identity, 3 the console
# closed in provisioning mode) and 75: reset me (the tests' supervisor starts us again).

import os
import sys

RESET = 75
MAX_TRIES = 2


def _write(path, st):
    import json

    with open(path + ".tmp", "w") as f:
        json.dump(st, f)
    os.rename(path + ".tmp", path)  # atomic on littlefs and POSIX


def choose(app_dir):
    path = app_dir + "/boot.json"
    try:
        import json

        with open(path) as f:
            st = json.load(f)
        trial = st.get("trial")
        if trial:
            if trial.get("tries", 0) >= MAX_TRIES or trial.get("failed"):
                why = trial.get("failed") or "no commit after %d boots" % trial.get("tries", 0)
                st["rolled_back"] = {"version": trial.get("version"), "counter": trial.get("counter", 0),
                                     "reason": why}
                st["trial"] = None
                st["active"] = st.get("committed", "factory")
                _write(path, st)
                print("event=ota_rolled_back slot=%s to=%s" % (trial.get("slot"), st["active"]))
            else:
                trial["tries"] = trial.get("tries", 0) + 1
                _write(path, st)
                slot = trial.get("slot")
                print("event=ota_trial_boot slot=%s tries=%d" % (slot, trial["tries"]))
                return slot
        return st.get("committed", "factory")
    except Exception as e:  # no boot.json, a torn one, a wrong type: the factory app
        if not isinstance(e, OSError):
            print("event=ota_boot_json_unusable reason=%r" % e)
        return "factory"


def main():
    storage = "/data" if sys.platform == "esp32" else (os.getenv("UE_STORAGE") or ".")
    app_dir = storage + "/app"
    slot = choose(app_dir)
    if slot in ("a", "b"):
        try:
            os.stat(app_dir + "/" + slot + "/ue/app.py")
            sys.path.insert(0, app_dir + "/" + slot)
        except OSError:
            slot = "factory"
    else:
        slot = "factory"
    for name in list(sys.modules):
        if name == "ue" or name.startswith("ue."):
            del sys.modules[name]
    if slot == "factory":
        from ue import app

        return app.main(slot)
    try:
        from ue import app

        return app.main(slot)
    except Exception as e:
        sys.print_exception(e)
        return RESET


if __name__ == "__main__":
    code = main()
    if code == RESET and sys.platform == "esp32":
        import machine

        machine.reset()
    if code and sys.platform != "esp32":
        sys.exit(code)
