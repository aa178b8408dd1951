"""Decode a create body one request at a time, so a 256 MB body is never held as objects.

The body is read from the socket in chunks; the `requests` array is decoded element by element
with `json.JSONDecoder.raw_decode`, and each element is checked and handed on as its own raw JSON.
The error messages follow the real API's (pydantic-style `loc: message`), plus the offending index
and value so that a caller can find the culprit in a big batch.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, NoReturn, Protocol

from batchline.emulator.errors import invalid_request

MAX_REQUESTS: Final = 100_000
CUSTOM_ID_PATTERN: Final = "^[a-zA-Z0-9_-]{1,64}$"
_CUSTOM_ID: Final = re.compile("[a-zA-Z0-9_-]{1,64}")
_REQUEST_KEYS: Final = frozenset({"custom_id", "params"})
_NOT_WHITESPACE: Final = re.compile("[^ \t\n\r]")
_CHUNK: Final = 1 << 20


class ByteSource(Protocol):
    """Where the body comes from: `read` returns up to `size` bytes, or b"" at the end."""

    def read(self, size: int, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class IncomingRequest:
    """One element of `requests`, checked for a valid `custom_id`, kept as the JSON it came as."""

    index: int
    custom_id: str
    raw: bytes


def _reject_constant(name: str) -> NoReturn:
    # NaN and Infinity are Python's extensions, not JSON.
    raise ValueError(f"{name} is not valid JSON")


class _TextStream:
    """A UTF-8 text window over a byte source, with just enough of a JSON tokenizer."""

    def __init__(self, source: ByteSource) -> None:
        self._source = source
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._decoder = json.JSONDecoder(parse_constant=_reject_constant)
        self._buf = ""
        self._pos = 0
        self._eof = False

    def _more(self) -> bool:
        """Append the next chunk to the window; False once the source is exhausted."""
        if self._eof:
            return False
        data = self._source.read(_CHUNK)
        try:
            text = self._utf8.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise invalid_request(f"The request body is not valid UTF-8: {exc.reason}") from None
        self._eof = not data
        # Drop what has been consumed so that the window only ever holds the current value.
        self._buf = self._buf[self._pos :] + text
        self._pos = 0
        return True

    def peek(self) -> str:
        """The next character that is not whitespace, or "" at the end of the body."""
        while True:
            found = _NOT_WHITESPACE.search(self._buf, self._pos)
            if found is not None:
                self._pos = found.start()
                return found.group()
            self._pos = len(self._buf)
            if not self._more():
                return ""

    def take(self, expected: str, context: str) -> None:
        """Consume one structural character or reject the body."""
        found = self.peek()
        if found != expected:
            shown = repr(found) if found else "the end of the body"
            raise invalid_request(
                f"The request body is not valid JSON: expected {expected!r} {context}, "
                f"found {shown}"
            )
        self._pos += 1

    def value(self) -> tuple[Any, str]:
        """Decode the next JSON value; returns it with the exact text it was decoded from."""
        self.peek()
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
            except (json.JSONDecodeError, ValueError) as exc:
                # Most failures only mean the value continues in the next chunk.
                if self._more():
                    continue
                raise invalid_request(f"The request body is not valid JSON: {exc}") from None
            # A number or literal that touches the end of the window may go on in the next chunk.
            if end == len(self._buf) and self._more():
                continue
            raw = self._buf[self._pos : end]
            self._pos = end
            return value, raw


def iter_requests(
    source: ByteSource, *, max_requests: int = MAX_REQUESTS
) -> Iterator[IncomingRequest]:
    """Yield each request of a create body in order; raise `ApiError` at the first problem."""
    stream = _TextStream(source)
    if stream.peek() != "{":
        if stream.peek() == "":
            raise invalid_request("The request body is not valid JSON: the body is empty")
        stream.value()
        raise invalid_request("Input should be a valid dictionary")
    stream.take("{", "at the start of the body")
    seen_requests = False
    if stream.peek() == "}":
        stream.take("}", "")
    else:
        while True:
            key, _ = stream.value()
            if not isinstance(key, str):
                raise invalid_request("The request body is not valid JSON: keys must be strings")
            stream.take(":", f"after the key {key!r}")
            if key != "requests":
                raise invalid_request(f"{key}: Extra inputs are not permitted")
            if seen_requests:
                raise invalid_request("requests: given more than once")
            seen_requests = True
            yield from _iter_array(stream, max_requests)
            if stream.peek() == ",":
                stream.take(",", "")
                continue
            stream.take("}", "to close the body")
            break
    if stream.peek() != "":
        raise invalid_request("The request body is not valid JSON: extra data after the object")
    if not seen_requests:
        raise invalid_request("requests: Field required")


def _iter_array(stream: _TextStream, max_requests: int) -> Iterator[IncomingRequest]:
    if stream.peek() != "[":
        stream.value()
        raise invalid_request("requests: Input should be a valid list")
    stream.take("[", "")
    if stream.peek() == "]":
        raise invalid_request("requests: List should have at least 1 item after validation, not 0")
    first_index: dict[str, int] = {}
    index = 0
    while True:
        element, raw = stream.value()
        if index >= max_requests:
            total = index + 1 + _count_rest(stream)
            raise invalid_request(
                f"requests: List should have at most {max_requests} items after validation, "
                f"not {total}"
            )
        custom_id = _check_element(index, element)
        earlier = first_index.setdefault(custom_id, index)
        if earlier != index:
            raise invalid_request(
                "requests: custom_id's must be unique within a batch. Duplicate custom_id found: "
                f"{custom_id} (requests.{index} repeats requests.{earlier})"
            )
        yield IncomingRequest(index, custom_id, raw.encode())
        index += 1
        if stream.peek() == ",":
            stream.take(",", "")
            continue
        stream.take("]", "to close requests")
        return


def _count_rest(stream: _TextStream) -> int:
    """Count the remaining elements of the array without keeping them, for the error message."""
    count = 0
    while stream.peek() == ",":
        stream.take(",", "")
        stream.value()
        count += 1
    stream.take("]", "to close requests")
    return count


def _check_element(index: int, element: object) -> str:
    """The element's custom_id if the element is well-formed, else the API's 400."""
    where = f"requests.{index}"
    if not isinstance(element, dict):
        raise invalid_request(f"{where}: Input should be a valid dictionary")
    for key in element:
        if key not in _REQUEST_KEYS:
            raise invalid_request(f"{where}.{key}: Extra inputs are not permitted")
    if "custom_id" not in element:
        raise invalid_request(f"{where}.custom_id: Field required")
    custom_id = element["custom_id"]
    if not isinstance(custom_id, str):
        raise invalid_request(f"{where}.custom_id: Input should be a valid string")
    if len(custom_id) > 64:
        raise invalid_request(
            f"{where}.custom_id: String should have at most 64 characters (got {custom_id!r})"
        )
    if not _CUSTOM_ID.fullmatch(custom_id):
        raise invalid_request(
            f"{where}.custom_id: String should match pattern '{CUSTOM_ID_PATTERN}' "
            f"(got {custom_id!r})"
        )
    if "params" not in element:
        raise invalid_request(f"{where}.params: Field required")
    if not isinstance(element["params"], dict):
        raise invalid_request(f"{where}.params: Input should be a valid dictionary")
    return custom_id
