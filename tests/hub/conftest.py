"""Fixtures of the Hub tests: the local Hub emulator."""
from hub.fake_hub import fake_hub  # noqa: F401  (a pytest fixture)
