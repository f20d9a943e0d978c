"""Field-bus drivers: device profiles, Modbus (RTU/TCP), serial line sensors, simulators.

This package never imports ``agent``: drivers turn bytes on a bus into named values
and know nothing about buffering or uplinks.
"""
