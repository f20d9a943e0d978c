"""Data-only package: example configs, device profiles and JSON schemas shipped with urbanedge.

Installed as ``urbanedge_config`` so the demo and ``config check`` find the built-in
profiles without a source checkout.
"""
