"""Reading the user's text files: one path for manifests, lists, transcripts, labels and recipes.

Every text file speechbs reads from a user goes through :func:`read_text`, so
every reader behaves the same way:

- the text is UTF-8; a leading byte order mark (U+FEFF, which Windows editors
  and spreadsheet exports write) is removed, so it never becomes part of the
  first utterance id, path, symbol or TOML key;
- a file that is not UTF-8 is a :class:`~speechbs.errors.DataError` naming the
  file, the line and the byte offset of the first bad byte, and how to re-encode it;
- a missing file, a directory or an unreadable file is one clear line too.
"""

from __future__ import annotations

from pathlib import Path

from speechbs.errors import DataError

BOM = b"\xef\xbb\xbf"
"""U+FEFF in UTF-8: written at the start of a file by some editors and spreadsheet exports."""


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of ``path`` without a leading byte order mark (as the ``utf-8-sig`` codec reads it).

    ``what`` names the file in messages (``"transcripts file"``, ``"recipe"``).
    """
    path = Path(path)
    data = read_bytes(path, what)
    skip = len(BOM) if data.startswith(BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(not_utf8_message(path, data, skip + exc.start, what)) from None


def read_lines(path: str | Path, what: str = "file") -> list[str]:
    """The lines of ``path`` split at ``\\n`` only, the empty string after a final newline dropped.

    Unlike ``str.splitlines`` this never splits inside a line at other separators
    (form feeds, U+2028), so line ``i`` here is line ``i`` for every tool that
    counts ``\\n``; a ``\\r`` before the newline (Windows line ends) is removed.
    """
    lines = read_text(path, what).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_bytes(path: Path, what: str = "file") -> bytes:
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise DataError(f"{what} {path} is a directory; give the path of a file") from None
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except PermissionError:
        raise DataError(f"{what} {path} cannot be read: permission denied (check its mode with ls -l)") from None


def require_file(path: str | Path, what: str = "file", hint: str = "") -> Path:
    """``path`` if it is a file, else "WHAT PATH does not exist HINT" (or "is a directory")."""
    path = Path(path)
    hint = f" {hint}" if hint else ""
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.is_file())[:3]
        example = f" (it holds {', '.join(inside)}{', ...' if len(inside) == 3 else ''})" if inside else ""
        raise DataError(f"{what} {path} is a directory{example}; give the path of a file{hint}")
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist{hint}")
    return path


def not_utf8_message(path: Path, data: bytes, offset: int, what: str = "file") -> str:
    """Where the first byte that is not UTF-8 sits (``offset`` counts bytes from the file's start)."""
    line = data.count(b"\n", 0, offset) + 1
    return (f"{what} {path} is not UTF-8 text: byte 0x{data[offset]:02x} at offset {offset} (line {line}) "
            f"is not valid UTF-8. "
            f"Re-encode the file to UTF-8, e.g. `iconv -f latin1 -t utf-8 {path} > {path}.utf8` "
            f"(use the encoding it was written in), and use the new file")
