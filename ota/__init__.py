"""Software releases: the TUF repository the province signs, per-node manifests, SBOMs and rollouts.

This is the release side (run by the provincial release team, offline keys). What a gateway runs
to take an update lives in ``agent/update``; what a node runs, in ``firmware/ue/ota.py``.
"""
