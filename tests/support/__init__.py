"""Test support: fixtures and helpers shared by the test modules (registered in conftest.py)."""
