"""Why a click-log file cannot be read, found before a parser says it worse: empty, compressed unlike its name,
binary, not UTF-8. Every message names the file, its role (``data.train``, ``input``) and what was expected."""

from __future__ import annotations

import bz2
import codecs
import lzma
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

HEAD = 1 << 16  # bytes checked before every read
_CHUNK = 1 << 20
UTF8_BOM = codecs.BOM_UTF8
# Leading bytes of compressed or binary formats: the suffix they go by, and what they are.
MAGIC = {
    b"\x1f\x8b": (".gz", "gzip-compressed"),
    b"BZh": (".bz2", "bzip2-compressed"),
    b"\xfd7zXZ\x00": (".xz", "xz-compressed"),
    b"PK\x03\x04": (".zip", "a zip archive"),
    b"\x28\xb5\x2f\xfd": (".zst", "zstd-compressed"),
    b"\x04\x22\x4d\x18": (".lz4", "lz4-compressed"),
    b"PAR1": (".parquet", "a Parquet file"),
}
COMPRESSIONS = {".gz", ".bz2", ".xz", ".zip", ".zst", ".lz4"}
MAGIC_KIND = dict(MAGIC.values())


class DataFileError(ValueError):
    """A click-log file that cannot be used as given; the message says what to change."""


def check_text_file(path: Path, role: str, expected: str, error: type[DataFileError] = DataFileError) -> bytes:
    """The first 64 KiB of a text log (decompressed, without a UTF-8 byte-order mark), checked.

    Raises ``error`` naming ``role``, the file and ``expected`` when the file is empty, compressed (or Parquet)
    unlike its name says, binary, UTF-16, or not UTF-8 in those bytes.
    """
    where = f"{role}: '{path}'"
    with path.open("rb") as file:
        raw = file.read(8)
    if not raw:
        raise error(f"{where} is empty (0 bytes); expected {expected}")
    mismatch = _compression_mismatch(path, raw)
    if mismatch is not None:
        raise error(f"{where} {mismatch[0]}; expected {expected}: name it '{mismatch[1]}'")
    try:
        with _open_decompressed(path) as stream:
            head = stream.read(HEAD)
    except (OSError, EOFError, ValueError, lzma.LZMAError, zipfile.BadZipFile, pa.ArrowException) as failure:
        raise error(f"{where} cannot be decompressed ({failure}); expected {expected}") from failure
    if not head.removeprefix(UTF8_BOM).strip():
        raise error(f"{where} is empty; expected {expected}")
    return _checked_head(head, where, expected, complete=len(head) < HEAD, error=error)


def _compression_mismatch(path: Path, raw: bytes) -> tuple[str, str] | None:
    """What the leading bytes say against the name, and the name to give, when they disagree."""
    named = path.suffix.lower() if path.suffix.lower() in COMPRESSIONS else None
    suffix, kind = next((found for magic, found in MAGIC.items() if raw.startswith(magic)), (None, None))
    if suffix == named or (suffix is None and named in (None, ".lz4")):  # lz4 has more than one frame format
        return None
    if suffix is None:
        return f"is not {MAGIC_KIND[named]} although its name ends in '{named}'", path.stem
    if suffix == ".parquet":
        return f"is {kind} but its name ends in '{path.suffix}'", f"{path.stem}.parquet"
    stem = path.stem if named else path.name
    return f"is {kind} but its name ends in '{path.suffix}'", f"{stem}{suffix}"


def _checked_head(head: bytes, where: str, expected: str, complete: bool, error: type[DataFileError]) -> bytes:
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise error(f"{where} is UTF-16 text; expected {expected} in UTF-8: convert it (iconv -f UTF-16 -t UTF-8)")
    head = head.removeprefix(UTF8_BOM)
    nul = head.find(b"\x00")
    if nul >= 0:
        raise error(f"{where} holds binary data (a NUL byte at byte {nul}), not text; expected {expected}")
    bad = first_bad_utf8(iter([head]), final=complete)
    if bad is not None:
        raise error(not_utf8_message(where, expected, *bad))
    return head


def not_utf8_message(where: str, expected: str, line: int, offset: int, byte: int) -> str:
    return (
        f"{where}, line {line}: byte 0x{byte:02x} (byte {offset} of the file) is not UTF-8 text; expected "
        f"{expected} in UTF-8: convert it, e.g. iconv -f latin1 -t utf-8"
    )


def first_bad_utf8(chunks: Iterator[bytes], final: bool = True) -> tuple[int, int, int] | None:
    """(line, byte offset, byte value) of the first byte that is not UTF-8 in ``chunks``, or None.

    A file's leading UTF-8 byte-order mark counts as bytes of line 1. With ``final`` False a multi-byte
    character cut at the end is not an error (the bytes are a file's head).
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1
    for chunk in chunks:
        try:
            decoder.decode(chunk)
        except UnicodeDecodeError as failure:
            # The decoder may hold up to 3 bytes of an unfinished character from the previous chunk.
            held = len(failure.object) - len(chunk)
            start = offset - held + failure.start
            local = max(failure.start - held, 0)
            return lines + chunk.count(b"\n", 0, local), start, failure.object[failure.start]
        offset += len(chunk)
        lines += chunk.count(b"\n")
    if final:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as failure:
            return lines, offset - len(failure.object) + failure.start, failure.object[failure.start]
    return None


def find_bad_utf8(path: Path, role: str, expected: str, error: type[DataFileError] = DataFileError) -> DataFileError:
    """The error for a text log that a parser found not to be UTF-8: the line and byte of the first bad byte."""
    with _open_decompressed(path) as stream:
        bad = first_bad_utf8(iter(lambda: stream.read(_CHUNK), b""))
    if bad is None:
        return error(f"{role}: '{path}' is not UTF-8 text; expected {expected} in UTF-8")
    return error(not_utf8_message(f"{role}: '{path}'", expected, *bad))


def _open_decompressed(path: Path) -> BinaryIO:
    """The file's bytes, decompressed as its suffix says (as pandas and pyarrow read it)."""
    suffix = path.suffix.lower()
    if suffix == ".xz":
        return lzma.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".zip":
        archive = zipfile.ZipFile(path)
        return archive.open(archive.namelist()[0])
    return pa.input_stream(str(path), compression="detect")
