"""The fuzz target in the normal test run: a bounded random-mutation pass (seeded, so a
failure reproduces); the coverage-guided run with atheris is in the module docstring."""

from __future__ import annotations

from tests.fuzz.fuzz_ioc_open import run_random


def test_mutated_vectors_raise_only_rejected() -> None:
    assert run_random(3000, seed=1) == 3000
