"""urbanedge: the command-line entry point shared by the gateway agent, simulators and tools."""

__version__ = "0.1.0"
