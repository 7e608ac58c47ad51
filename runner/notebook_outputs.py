r"""The outputs of an executing notebook, kept the way Jupyter front ends keep them.

Iopub messages become nbformat outputs as JupyterLab and nbclient record them:
``update_display_data`` (``display(..., display_id=...)`` and ``DisplayHandle.update``) rewrites
every earlier output with that display id, in any cell; a new display with a known id updates
the earlier ones too; ``clear_output(wait=True)`` clears only when the next output arrives; and
consecutive stream messages of one stream are one output whose text has what ``\r`` and
backspace overwrote removed, as nbconvert and JupyterLab do (a progress bar is kept as its last
state, not as every update). A stream output keeps at most ``max_stream_chars`` characters, its
first and last ones, with a note where the middle was dropped: a cell printing 200 MB costs the
runner a bounded amount (Jupyter's server drops such output too, past its data rate limit).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["OutputRecorder"]

_DISPLAY_KINDS = ("display_data", "execute_result", "update_display_data")
_OVERWRITTEN_BY_CR = re.compile(r"[^\n]*\r(?=[^\n\r])")
_ERASED_BY_BACKSPACE = re.compile(r"[^\n\x08]\x08")


class OutputRecorder:
    """Records iopub messages into the ``outputs`` of the cells of one notebook.

    Parameters
    ----------
    cells
        The notebook's cells (nbformat dicts); code cells get their outputs appended.
    max_stream_chars
        Characters kept of one stream output (first and last halves); ``None`` keeps everything.
    """

    def __init__(self, cells: list[dict[str, Any]], max_stream_chars: int | None = None) -> None:
        self.cells = cells
        self.max_stream_chars = max_stream_chars
        #: ``id`` of a stream output -> its text, capped
        self._streams: dict[int, _CappedText] = {}
        #: display id -> {cell index -> indexes of that cell's outputs showing it}
        self._display_ids: dict[str, dict[int, list[int]]] = {}
        #: cells whose outputs a ``clear_output(wait=True)`` clears at their next output
        self._clear_next: set[int] = set()

    def record(self, index: int, kind: str, content: dict[str, Any]) -> None:
        """Record one iopub message (``kind``, ``content``) of cell ``index``."""
        if kind == "clear_output":
            if content.get("wait"):
                self._clear_next.add(index)
            else:
                self._clear(index)
            return
        display_id = None
        if kind in _DISPLAY_KINDS:
            display_id = (content.get("transient") or {}).get("display_id")
            if display_id:
                self._update(display_id, content)
            if kind == "update_display_data":  # updates earlier outputs, is never an output itself
                return
        output = _output(kind, content)
        if output is None:
            return
        if index in self._clear_next:
            self._clear(index)
        outputs: list[dict[str, Any]] = self.cells[index]["outputs"]
        last = outputs[-1] if outputs else None
        if (
            output["output_type"] == "stream"
            and last is not None
            and last.get("output_type") == "stream"
            and last.get("name") == output["name"]
        ):
            last["text"] = self._streams[id(last)].add(output["text"])
            return
        if display_id:
            self._display_ids.setdefault(display_id, {}).setdefault(index, []).append(len(outputs))
        if output["output_type"] == "stream":
            text = self._streams[id(output)] = _CappedText(self.max_stream_chars)
            output["text"] = text.add(output["text"])
        outputs.append(output)

    def _update(self, display_id: str, content: dict[str, Any]) -> None:
        for cell_index, positions in self._display_ids.get(display_id, {}).items():
            outputs = self.cells[cell_index]["outputs"]
            for position in positions:
                outputs[position]["data"] = content.get("data", {})
                outputs[position]["metadata"] = content.get("metadata", {})

    def _clear(self, index: int) -> None:
        for output in self.cells[index]["outputs"]:
            self._streams.pop(id(output), None)
        self.cells[index]["outputs"].clear()
        self._clear_next.discard(index)
        for cells in self._display_ids.values():
            cells.pop(index, None)


@dataclass
class _CappedText:
    """The text of one stream output: whole up to ``max_chars``, then its first and last halves."""

    max_chars: int | None
    head: str = ""
    tail: str = ""
    dropped: int = 0

    def add(self, text: str) -> str:
        """Append ``text``; the output's text as it is now kept."""
        self.tail = _overwrite(self.tail + text)
        if self.max_chars is None or len(self.head) + len(self.tail) <= self.max_chars:
            return self.head + self.tail
        half = self.max_chars // 2
        if not self.head:
            self.head, self.tail = self.tail[:half], self.tail[half:]
        self.dropped += len(self.tail) - half
        self.tail = self.tail[-half:] if half else ""
        note = (
            f"\n[output] {self.dropped:,} characters dropped here: a stream output keeps "
            f"{self.max_chars:,} characters (the job's max_log_bytes), its first and last ones\n"
        )
        return self.head + note + self.tail


def _overwrite(text: str) -> str:
    r"""``text`` without what backspaces erased and without each line's part before a ``\r``.

    A ``\r`` at the very end is kept: what follows it in the next message overwrites the line.
    """
    if "\x08" in text:
        shorter = _ERASED_BY_BACKSPACE.sub("", text)
        while len(shorter) < len(text):
            text, shorter = shorter, _ERASED_BY_BACKSPACE.sub("", shorter)
    return _OVERWRITTEN_BY_CR.sub("", text) if "\r" in text else text


def _output(kind: str, content: dict[str, Any]) -> dict[str, Any] | None:
    """The nbformat output of an iopub message, or ``None`` for messages that are not outputs."""
    if kind == "stream":
        return {
            "output_type": "stream",
            "name": content.get("name", "stdout"),
            "text": content.get("text", ""),
        }
    if kind in ("display_data", "execute_result"):
        output: dict[str, Any] = {
            "output_type": kind,
            "data": content.get("data", {}),
            "metadata": content.get("metadata", {}),
        }
        if kind == "execute_result":
            output["execution_count"] = content.get("execution_count")
        return output
    if kind == "error":
        return {
            "output_type": "error",
            "ename": content.get("ename", ""),
            "evalue": content.get("evalue", ""),
            "traceback": content.get("traceback", []),
        }
    return None
