"""Fixtures for the tests that drive the real servers of the local stack.

The stack (scripts/stack up) must be running; its env file says where.
Every test session works in a domain of its own with a random name, so the
suite can run again and again against a stack that stays up, and removes
what it added when it ends.
"""

import os
import secrets
import shutil
import subprocess

import pytest

from mmtest import Stack


def _env_file():
    root = os.environ.get("STACK_DIR") or os.path.join(
        os.path.dirname(__file__), "..", "..", ".stack")
    return os.path.join(root, "env")


@pytest.fixture(scope="session")
def stack():
    path = _env_file()
    if not os.path.exists(path):
        pytest.fail(f"{path} missing: run scripts/stack up first")
    return Stack.from_env_file(path)


class Directory:
    """A throwaway domain with two users and an alias, made through the API."""

    def __init__(self, stack):
        self.stack = stack
        self.domain = f"t{secrets.token_hex(4)}.test"
        self.passwords = {}
        stack.sql("SELECT mail.add_domain(%s)", self.domain)
        self.alice = self.add_user("alice")
        self.bob = self.add_user("bob")
        self.team = f"team@{self.domain}"
        stack.sql("SELECT mail.add_alias(%s, %s)", self.team,
                  [self.alice, self.bob])

    def add_user(self, local, quota=None):
        address = f"{local}@{self.domain}"
        password = "pw-" + secrets.token_urlsafe(12)
        if quota is None:
            self.stack.sql("SELECT mail.add_user(%s, %s)", address, password)
        else:
            self.stack.sql("SELECT mail.add_user(%s, %s, %s)", address,
                           password, quota)
        self.passwords[address] = password
        return address

    def remove(self):
        s = self.stack
        for alias in s.sql("SELECT address FROM mail.aliases a JOIN mail.domains d"
                           " USING (domain_id) WHERE d.domain = %s", self.domain):
            s.sql("SELECT mail.delete_alias(%s)", alias[0])
        for user in s.sql("SELECT address FROM mail.users u JOIN mail.domains d"
                          " USING (domain_id) WHERE d.domain = %s", self.domain):
            s.sql("SELECT mail.delete_user(%s)", user[0])
        s.sql("SELECT mail.delete_domain(%s)", self.domain)
        shutil.rmtree(os.path.join(s.env["STACK_DIR"], "mail", self.domain),
                      ignore_errors=True)


@pytest.fixture(scope="session")
def directory(stack):
    d = Directory(stack)
    yield d
    d.remove()
