"""Fixtures for the fault suite: a fresh stack of real processes per test, on either broker."""

from __future__ import annotations

import pytest

from payouts_devstack.rabbitmq import RabbitMQUnavailable, unavailable_reason
from tests.faults.stack import Stack


@pytest.fixture
def make_stack(tmp_path):
    stacks = []

    def make(broker: str = "redis", private_node: bool = False, **env: str) -> Stack:
        """A stack whose broker is its own Redis, or RabbitMQ: a vhost of its own on the machine's
        broker, or with `private_node` a node of its own (for scenarios that restart it)."""
        if broker == "rabbitmq" and not private_node and unavailable_reason():
            pytest.skip(f"RabbitMQ scenario skipped: {unavailable_reason()}")
        stack = Stack(tmp_path / f"stack{len(stacks)}", **env)
        stacks.append(stack)
        if broker == "rabbitmq":
            try:
                stack.use_rabbitmq(private_node=private_node)
            except RabbitMQUnavailable as exc:
                pytest.skip(f"RabbitMQ scenario skipped: {exc}")
        return stack

    yield make
    for stack in stacks:
        stack.close()
