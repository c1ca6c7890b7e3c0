"""Binds every feature file under features/ to the step modules loaded by the root conftest.py."""

from pytest_bdd import scenarios

scenarios(".")
