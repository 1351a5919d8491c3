"""Reading users' text files the same forgiving-but-strict way everywhere.

Accepted silently, because editors write them and they change no content: a UTF-8 byte-order
mark at the start of the file and CRLF line ends. Refused with the file and line named: bytes
that are not UTF-8 (a raw UnicodeDecodeError names neither) and files that cannot be read.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator

from sbsd_jax.data.examples import DataFormatError


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise DataFormatError(f"cannot read the file ({error.strerror})", path=path) from error


def _decode_line(raw: bytes, path: str, line_number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        byte = raw[error.start]
        raise DataFormatError(
            f"not UTF-8 text (byte 0x{byte:02x} at byte {error.start + 1} of the line); "
            "save the file as UTF-8",
            path=path,
            line=line_number,
        ) from None


def text_lines(path: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its line end) for every line of the file."""
    data = _read_bytes(path)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the final newline ends the last line, it does not start another
    for index, raw in enumerate(lines):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        yield index + 1, _decode_line(raw, path, index + 1)


def read_text(path: str) -> str:
    """The whole file as text, '\\n' line ends; DataFormatError names a non-UTF-8 line."""
    return "\n".join(line for _, line in text_lines(path))
