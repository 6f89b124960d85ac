"""Operator tooling: the `payouts` command line and a local Redis for development and tests."""
