"""Type stub of encore's compiled hot spots (``_native.c``): the v2 record path and key64."""

from collections.abc import Iterator
from typing import Any

class Records(Iterator[Any]):
    """The regular records of one v2 batch from ``pos``; stops at the first irregular one."""

    def __init__(
        self,
        part: Any,
        buffer: bytes,
        pos: int,
        count: int,
        base_offset: int,
        cls: type[Any],
        base_timestamp: int,
        timestamp_deltas: bool,
    ) -> None: ...
    def __next__(self) -> Any: ...
    @property
    def pos(self) -> int:
        """Where the next record starts."""
    @property
    def done(self) -> int:
        """How many records were returned."""

def key64(ids: list[str], /) -> bytes:
    """FNV-1a 64 over each id's UTF-8 bytes, then splitmix64: 8 native-endian bytes per id."""
