"""The console's roles, lowest first: each may do all that the roles before it may."""

from __future__ import annotations

__all__ = ["ROLES", "role_at_least"]

ROLES = ("viewer", "operator", "approver")


def role_at_least(role: str, needed: str) -> bool:
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)
