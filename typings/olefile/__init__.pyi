"""Type stub for the ``olefile`` package (only what milterd uses: milterd/content/outlookmsg.py)."""

from typing import IO

DEFECT_INCORRECT: int
STGTY_STORAGE: int
STGTY_STREAM: int

class OleFileError(OSError): ...

class OleDirectoryEntry:
    name: str
    entry_type: int
    size: int
    kids: list[OleDirectoryEntry]

class OleFileIO:
    root: OleDirectoryEntry
    def __init__(self, filename: IO[bytes] | bytes | str, raise_defects: int = ...) -> None: ...
    def openstream(self, filename: str | list[str]) -> IO[bytes]: ...
    def close(self) -> None: ...
