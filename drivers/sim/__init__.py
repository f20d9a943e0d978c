"""Simulated field devices built from the same profiles the gateway polls.

``server.Simulator`` serves Modbus units over TCP or RTU (pymodbus servers), with values
from ``model`` and faults from ``faults``; ``line.LineSimulator`` emits the ASCII
sentences of serial line sensors; ``cli`` exposes both as ``urbanedge sim KIND``.
"""
