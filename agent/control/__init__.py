"""Signed commands from the IOC: verify (pure), remember (replay window), execute, report."""
