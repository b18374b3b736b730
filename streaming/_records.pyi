"""Type stub of the compiled regular path of the lean v2 record parser (``_records.c``)."""

from collections.abc import Iterator
from typing import Any

class Records(Iterator[Any]):
    """The regular records of one v2 batch from ``pos``; stops at the first irregular one."""

    def __init__(
        self, part: Any, buffer: bytes, pos: int, count: int, base_offset: int, cls: type[Any]
    ) -> None: ...
    def __next__(self) -> Any: ...
    @property
    def pos(self) -> int:
        """Where the next record starts."""
    @property
    def done(self) -> int:
        """How many records were returned."""
