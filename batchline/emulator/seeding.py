"""Deterministic draws and identifiers: everything random is a hash of the seed and a context."""

from __future__ import annotations

import hashlib
import secrets
from typing import Final

_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def digest(seed: int, *parts: str | int) -> bytes:
    """SHA-256 of the seed and the parts, separated so that ("ab", "c") differs from ("a", "bc")."""
    text = "\x1f".join([str(seed), *(str(part) for part in parts)])
    return hashlib.sha256(text.encode()).digest()


def unit(seed: int, *parts: str | int) -> float:
    """A number in [0, 1) that depends only on the seed and the parts."""
    return int.from_bytes(digest(seed, *parts)[:8], "big") / 2**64


def sort_key(seed: int, *parts: str | int) -> int:
    """A signed 64-bit key (SQLite's INTEGER range) for a stable pseudo-random order."""
    return int.from_bytes(digest(seed, *parts)[:8], "big", signed=True)


def _base62(raw: bytes, length: int) -> str:
    number = int.from_bytes(raw, "big")
    chars = []
    for _ in range(length):
        number, rest = divmod(number, 62)
        chars.append(_ALPHABET[rest])
    return "".join(chars)


def object_id(prefix: str, seed: int, *parts: str | int) -> str:
    """An id shaped like the API's (`msgbatch_01` + 22 base62 characters), derived from parts."""
    return f"{prefix}_01{_base62(digest(seed, prefix, *parts), 22)}"


def request_id() -> str:
    """A fresh `req_...` id for a response header; it identifies a call and steers nothing."""
    return f"req_01{_base62(secrets.token_bytes(24), 22)}"
