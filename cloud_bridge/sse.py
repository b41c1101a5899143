"""Server-sent events framing (the WHATWG rules OpenAI-compatible servers follow).

Lines in, one ``data`` payload out per event: ``data:`` lines of one event are joined
with newlines, comment lines (``:``) and other fields (``event``, ``id``, ``retry``) are
skipped, a blank line ends the event. The ``[DONE]`` sentinel is returned like any other
payload; the caller decides what it means.
"""

from __future__ import annotations


class SSEDecoder:
    """Feed it lines (without their line ending); it returns complete payloads."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        if line == "":
            return self.flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        return None

    def flush(self) -> str | None:
        """The pending event's payload, if any (also used at end of stream)."""
        if not self._data:
            return None
        payload = "\n".join(self._data)
        self._data = []
        return payload
