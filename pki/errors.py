"""Typed errors of the PKI. Every one is bad input: the CLI reports it and exits 2."""

from __future__ import annotations

from pathlib import Path


class PkiError(Exception):
    """Base of the errors the CLI turns into a one-line message and exit code 2."""


class FileProblem(PkiError):
    """A file that is missing, unreadable, malformed or must not be overwritten."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


class KeyFileError(FileProblem):
    """A private key file that cannot be read, parsed, or written."""


class BadPassphraseError(KeyFileError):
    """The passphrase does not open the key (or one was needed and not given)."""


class CertFileError(FileProblem):
    """A certificate, CRL or CSR file that cannot be read or parsed."""


class CsrError(FileProblem):
    """A CSR that parses but must not be signed (bad signature, key unfit for the profile, ...)."""


class CaStateError(FileProblem):
    """A CA directory that is missing pieces, or would be overwritten."""


class ProfileError(PkiError):
    """An unknown profile or a value that does not fit one (device id, days, key type)."""
