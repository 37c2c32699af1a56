"""Bodies being filled: read whole before they are stored, within the object-size limit
and a memory budget shared by every fill of the process (cache.fill_buffer_bytes), so
that many large concurrent misses stream through instead of exhausting memory."""

from __future__ import annotations


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
    __slots__ = ("_budget", "_chunks", "max_object", "size", "why_not")

    def __init__(self, budget: FillBudget, max_object: int) -> None:
        self._budget = budget
        self._chunks: list[bytes] = []
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
            self._chunks.append(chunk)
            self.size += n
            self._budget.held += n
            return True
        self.drop()
        return False

    def body(self) -> bytes:
        """The whole body, once; the chunks are let go before anything awaits, so a fill
        never holds its body twice while the store takes it."""
        body = b"".join(self._chunks)
        self.drop()
        return body

    def drop(self) -> None:
        self._budget.held -= self.size
        self._chunks.clear()
        self.size = 0
