"""Fixtures for the fault suite: a fresh stack of real processes per test."""

from __future__ import annotations

import pytest

from tests.faults.stack import Stack


@pytest.fixture
def make_stack(tmp_path):
    stacks = []

    def make(**env: str) -> Stack:
        stack = Stack(tmp_path / f"stack{len(stacks)}", **env)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()
