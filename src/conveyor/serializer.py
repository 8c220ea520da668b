"""How arguments and results are stored: JSON, never pickle."""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from conveyor.errors import SerializationError


class Serializer(Protocol):
    """Turns task arguments and results into text and back."""

    def dumps(self, value: Any) -> str: ...

    def loads(self, text: str) -> Any: ...


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# The C encoder called directly costs ~1 us per small payload; JSONEncoder.encode wraps it
# in ~2.6 us of Python. No circular-reference markers: a shared markers dict is not
# thread-safe, and a cycle still fails (RecursionError), just later.
_MAKE_C_ENCODER: Callable[..., Callable[[Any, int], tuple[str, ...]]] | None = getattr(
    json.encoder, "c_make_encoder", None
)  # absent where the C accelerator is (PyPy, some builds)
_C_ENCODER = (
    _MAKE_C_ENCODER(
        None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    if _MAKE_C_ENCODER is not None
    else None
)


def _encode(value: Any) -> str:
    if value is None:
        return "null"  # the most common result of all
    if _C_ENCODER is None:
        return _ENCODER.encode(value)
    return "".join(_C_ENCODER(value, 0))


class JSONSerializer:
    """Compact JSON; tuples come back as lists, as JSON has no tuple."""

    _decoder = json.JSONDecoder()
    _scan: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once  # type: ignore[attr-defined]

    def dumps(self, value: Any) -> str:
        try:
            return _encode(value)
        except RecursionError:
            raise SerializationError("not JSON serializable: it contains a reference cycle") from None
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"not JSON serializable: {exc}") from None

    def loads(self, text: str) -> Any:
        # The C scanner directly: half the cost of decode() for the compact text we write;
        # anything else (whitespace, trailing data) takes the full, strict path.
        try:
            value, end = self._scan(text, 0)
        except StopIteration:
            return self._decoder.decode(text)  # raises the usual JSONDecodeError
        return value if end == len(text) else self._decoder.decode(text)


def encode_call(serializer: Serializer, task: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """Encode one call's arguments, naming the task in the error when they cannot be stored."""
    try:
        return serializer.dumps([args, kwargs])
    except SerializationError as exc:
        raise SerializationError(f"arguments of task {task!r} are {exc}") from None


def decode_call(serializer: Serializer, payload: str) -> tuple[list[Any], dict[str, Any]]:
    """Decode a stored payload into (args, kwargs); raises ValueError naming what is wrong."""
    try:
        value = serializer.loads(payload)
    except Exception as exc:
        raise ValueError(f"payload does not decode: {exc}") from None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], list)
        or not isinstance(value[1], dict)
    ):
        raise ValueError("payload is not [args, kwargs]")
    return value[0], value[1]
