"""The agent stopping on purpose, to be started again (exit code 75 for the launcher).

Its own module so that what raises it (the ``restart`` command, a configuration switch, an
installed release) does not import the update machinery of the others.
"""


class RestartRequested(Exception):
    """Stop cleanly and exit for the launcher: a release installed and on trial, a ``restart``
    command, or a switched configuration."""
