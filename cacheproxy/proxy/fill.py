"""Bodies being filled: read whole before they are stored, within the object-size limit
and a memory budget shared by every fill of the process (cache.fill_buffer_bytes), so
that many large concurrent misses stream through instead of exhausting memory."""

from __future__ import annotations

# Pieces of a body shorter than this are joined, up to this size or _GATHER_PIECES of
# them, before they are kept: a chunked answer of one-byte chunks would otherwise hold a
# bytes object (some 40 bytes) and a list slot per byte, 8 MiB of content taking hundreds
# of MB beside the budget. A body of one piece (most small answers) is kept as it came:
# no copy, and no short-lived buffer between the long-lived bodies of the store.
_GATHER = 16 * 1024
_GATHER_PIECES = 256


class FillBudget:
    """Bytes held by the bodies being filled, all together."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def admits(self, announced: int) -> bool:
        """Whether a body of that announced length fits beside those being filled now."""
        return self.held + announced <= self.limit

    def fill(self, max_object: int, announced: int | None) -> Fill:
        """A new fill; its why_not is set at once when what the origin announced (the
        Content-Length) cannot fit."""
        fill = Fill(self, max_object)
        if announced is not None:
            if announced > max_object:
                fill.why_not = "too-big"
            elif self.held + announced > self.limit:
                fill.why_not = "fill-budget"
        return fill


class Fill:
    __slots__ = ("_budget", "_chunks", "_small", "_small_size", "max_object", "size",
                 "why_not")

    def __init__(self, budget: FillBudget, max_object: int) -> None:
        self._budget = budget
        self._chunks: list[bytes] = []
        self._small: list[bytes] = []  # short pieces not yet kept as one (_GATHER)
        self._small_size = 0
        self.max_object = max_object
        self.size = 0
        self.why_not = ""  # "too-big" or "fill-budget" once the fill is given up

    def add(self, chunk: bytes) -> bool:
        """Keep chunk; False (and nothing kept any more) when it does not fit."""
        n = len(chunk)
        if self.size + n > self.max_object:
            self.why_not = "too-big"
        elif self._budget.held + n > self._budget.limit:
            self.why_not = "fill-budget"
        else:
            if n < _GATHER:
                small = self._small
                small.append(chunk)
                self._small_size += n
                if self._small_size >= _GATHER or len(small) >= _GATHER_PIECES:
                    self._keep_small()
            else:
                self._keep_small()  # (first: the body stays in order)
                self._chunks.append(chunk)
            self.size += n
            self._budget.held += n
            return True
        self.drop()
        return False

    def body(self) -> bytes:
        """The whole body, once; the chunks are let go before anything awaits, so a fill
        never holds its body twice while the store takes it."""
        self._keep_small()
        body = b"".join(self._chunks)
        self.drop()
        return body

    def drop(self) -> None:
        self._budget.held -= self.size
        self._chunks.clear()
        self._small.clear()
        self._small_size = 0
        self.size = 0

    def _keep_small(self) -> None:
        if self._small:
            self._chunks.append(b"".join(self._small))  # (one piece: itself, not a copy)
            self._small.clear()
            self._small_size = 0
