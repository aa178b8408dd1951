"""The streaming create-body decoder, fed in awkward slices and measured for memory."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchline.emulator.errors import ApiError
from batchline.emulator.intake import iter_requests


class Trickle:
    """A byte source that hands out at most `step` bytes per read."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = data
        self._step = step
        self._pos = 0

    def read(self, size: int, /) -> bytes:
        piece = self._data[self._pos : self._pos + min(size, self._step)]
        self._pos += len(piece)
        return piece


class Generated:
    """A byte source that produces a large body lazily, never holding it whole."""

    def __init__(self, parts: Iterator[bytes]) -> None:
        self._parts = parts
        self._pending = b""

    def read(self, size: int, /) -> bytes:
        while len(self._pending) < size:
            part = next(self._parts, None)
            if part is None:
                break
            self._pending += part
        piece, self._pending = self._pending[:size], self._pending[size:]
        return piece


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(
    params=st.lists(
        st.dictionaries(st.text(max_size=8), _values, max_size=4), min_size=1, max_size=6
    ),
    step=st.integers(min_value=1, max_value=17),
    indent=st.sampled_from([None, 0, 2]),
    ascii_only=st.booleans(),
)
def test_any_slicing_decodes_the_same_requests(
    params: list[dict[str, Any]], step: int, indent: int | None, ascii_only: bool
) -> None:
    requests = [{"custom_id": f"id-{i}", "params": p} for i, p in enumerate(params)]
    body = json.dumps({"requests": requests}, indent=indent, ensure_ascii=ascii_only).encode()

    decoded = list(iter_requests(Trickle(body, step)))

    assert [(r.index, r.custom_id) for r in decoded] == [(i, f"id-{i}") for i in range(len(params))]
    assert [json.loads(r.raw) for r in decoded] == requests


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"requests": [{"custom_id": "a", "params": {}}]} x', "extra data"),
        (b'{"requests": [{"custom_id": "a", "params": {"t": NaN}}]}', "not valid JSON"),
        (b'{"requests": [{"custom_id": "a", "params": {}}', "not valid JSON"),
        (b"{}", "requests: Field required"),
        (b'{"requests": 5}', "requests: Input should be a valid list"),
    ],
)
def test_malformed_bodies_are_rejected(body: bytes, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        list(iter_requests(Trickle(body, 4)))

    assert caught.value.status == 400
    assert message in caught.value.message


def test_decoding_holds_one_chunk_not_the_body() -> None:
    prompt = "lorem ipsum dolor sit amet " * 100
    count = 8000
    element = {"custom_id": "", "params": {"model": "m", "messages": [{"content": prompt}]}}
    body_size = count * len(json.dumps(element))

    def parts() -> Iterator[bytes]:
        yield b'{"requests": ['
        for i in range(count):
            element["custom_id"] = f"r{i}"
            yield (b", " if i else b"") + json.dumps(element).encode()
        yield b"]}"

    tracemalloc.start()
    try:
        seen = sum(1 for _ in iter_requests(Generated(parts())))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert seen == count
    assert body_size > 20_000_000
    assert peak < 8_000_000  # a 1 MB read, its text, one element and the custom_id index
