"""How arguments and results are stored: JSON, never pickle."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from conveyor.errors import SerializationError


class Serializer(Protocol):
    """Turns task arguments and results into text and back."""

    def dumps(self, value: Any) -> str: ...

    def loads(self, text: str) -> Any: ...


class JSONSerializer:
    """Compact JSON; tuples come back as lists, as JSON has no tuple."""

    _encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    _decoder = json.JSONDecoder()

    def dumps(self, value: Any) -> str:
        try:
            return self._encoder.encode(value)
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"not JSON serializable: {exc}") from None

    def loads(self, text: str) -> Any:
        return self._decoder.decode(text)


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
