"""A test-only writer of Outlook message files: a Compound File (MS-CFB, version 3) of MAPI property streams
(MS-OXMSG), as Outlook's "Save as" writes one; olefile reads what it writes (tests/unit/test_attachments_msg.py)."""

from __future__ import annotations

import struct
from typing import Union

Tree = dict[str, Union[bytes, "Tree"]]

SECTOR, MINI_SECTOR, CUTOFF = 512, 64, 4096
FREE, END, FAT_SECTOR, NONE = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF
SIGNATURE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_HEADER = struct.Struct("<8s16s5H6s9L")
_ENTRY = struct.Struct("<64sHBB3L16sL2Q3L")
STORAGE, STREAM, ROOT = 1, 2, 5


def compound_file(tree: Tree, extra_fat: int = 0) -> bytes:
    """A Compound File holding *tree*: a name → bytes (a stream) or another dict (a storage); with *extra_fat* FAT
    sectors more than it needs (as Office writes small files)."""
    entries: list[dict[str, object]] = []

    def add(name: str, node: bytes | Tree, kind: int) -> int:
        index = len(entries)
        entries.append({"name": name, "kind": kind, "data": node if isinstance(node, bytes) else b"", "kids": [], "start": END, "size": 0})
        if isinstance(node, dict):
            entries[index]["kids"] = [add(k, v, STORAGE if isinstance(v, dict) else STREAM) for k, v in node.items()]
        return index

    add("Root Entry", tree, ROOT)
    sectors: list[bytes] = []
    fat: list[int] = []

    def put(data: bytes) -> int:
        count = -(-len(data) // SECTOR)
        if not count:
            return END
        start = len(sectors)
        for i in range(count):
            sectors.append(data[i * SECTOR:(i + 1) * SECTOR].ljust(SECTOR, b"\0"))
            fat.append(start + i + 1 if i < count - 1 else END)
        return start

    mini, minifat = bytearray(), []
    for entry in entries:
        data = entry["data"]
        assert isinstance(data, bytes)
        entry["size"] = len(data)
        if entry["kind"] != STREAM or not data:
            continue
        if len(data) < CUTOFF:
            count = -(-len(data) // MINI_SECTOR)
            start = len(minifat)
            minifat += [start + i + 1 for i in range(count - 1)] + [END]
            mini += data.ljust(count * MINI_SECTOR, b"\0")
            entry["start"] = start
        else:
            entry["start"] = put(data)
    entries[0]["start"], entries[0]["size"] = put(bytes(mini)), len(mini)
    minifat_start = put(struct.pack(f"<{len(minifat)}L", *minifat)) if minifat else END
    minifat_sectors = -(-len(minifat) * 4 // SECTOR)
    right: dict[int, int] = {}  # a storage's children are a chain of right siblings (olefile does not check the tree's order)
    for entry in entries:
        kids = entry["kids"]
        assert isinstance(kids, list)
        right.update(zip(kids, kids[1:], strict=False))
    directory = b"".join(_entry(entry, right.get(index, NONE)) for index, entry in enumerate(entries))
    directory += b"".join(_empty() for _ in range(-len(entries) % (SECTOR // _ENTRY.size)))
    directory_start = put(directory)
    fat_count = 1
    while len(sectors) + fat_count > fat_count * (SECTOR // 4):
        fat_count += 1
    fat_count += extra_fat
    fat_start = len(sectors)
    fat += [FAT_SECTOR] * fat_count
    fat += [FREE] * (fat_count * (SECTOR // 4) - len(fat))
    table = struct.pack(f"<{len(fat)}L", *fat)
    sectors += [table[i * SECTOR:(i + 1) * SECTOR] for i in range(fat_count)]
    difat = [fat_start + i for i in range(fat_count)] + [FREE] * (109 - fat_count)
    header = _HEADER.pack(SIGNATURE, b"\0" * 16, 0x3E, 3, 0xFFFE, 9, 6, b"\0" * 6, 0, fat_count, directory_start, 0, CUTOFF,
                          minifat_start, minifat_sectors, END, 0) + struct.pack("<109L", *difat)
    return header + b"".join(sectors)


def _entry(entry: dict[str, object], right: int) -> bytes:
    """A directory entry: its first child, and its right sibling."""
    name = str(entry["name"])
    kids = entry["kids"]
    assert isinstance(kids, list)
    child = kids[0] if kids else NONE
    encoded = (name + "\0").encode("utf-16-le")
    return _ENTRY.pack(encoded.ljust(64, b"\0"), len(encoded), int(str(entry["kind"])), 1, NONE, right, child, b"\0" * 16, 0, 0, 0,
                       int(str(entry["start"])), int(str(entry["size"])), 0)


def _empty() -> bytes:
    return _ENTRY.pack(b"\0" * 64, 0, 0, 0, NONE, NONE, NONE, b"\0" * 16, 0, 0, 0, 0, 0, 0)


# --- MS-OXMSG: a message's streams ------------------------------------------------------------------------------
def unicode(text: str) -> bytes:
    """A PT_UNICODE property stream's bytes (UTF-16LE, ended by a NUL)."""
    return (text + "\0").encode("utf-16-le")


def attachment(long_name: str | None, data: bytes | None = None, short_name: str | None = None, message: Tree | None = None,
               display_name: str | None = None, obj: Tree | None = None) -> Tree:
    """An attachment's storage: by value (*data*), an attached message (*message*, from :func:`msg_tree`) or an
    OLE object (*obj*, its storage's streams)."""
    node: Tree = {"__properties_version1.0": b"\0" * 8}
    if long_name is not None:
        node["__substg1.0_3707001F"] = unicode(long_name)
    if short_name is not None:
        node["__substg1.0_3704001F"] = unicode(short_name)
    if display_name is not None:
        node["__substg1.0_3001001F"] = unicode(display_name)
    if data is not None:
        node["__substg1.0_37010102"] = data
    if message is not None:
        node["__substg1.0_3701000D"] = message
    if obj is not None:
        node["__substg1.0_3701000D"] = obj
    return node


def msg_tree(subject: str, *attachments: Tree) -> Tree:
    """A message's storage: properties, subject, body, then its attachments' storages."""
    tree: Tree = {"__properties_version1.0": b"\0" * 32, "__substg1.0_0037001F": unicode(subject),
                  "__substg1.0_1000001F": unicode("See the attachment.")}
    for number, node in enumerate(attachments):
        tree[f"__attach_version1.0_#{number:08X}"] = node
    return tree


def msg_file(subject: str, *attachments: Tree) -> bytes:
    """An Outlook message file with *attachments*."""
    return compound_file(msg_tree(subject, *attachments))


def ole10native(label: str, source: str, data: bytes) -> bytes:
    """A Packager object's ``\\x01Ole10Native`` stream carrying *data* as the file *label* (saved from *source*)."""
    body = (struct.pack("<H", 2) + label.encode() + b"\0" + source.encode() + b"\0" + struct.pack("<2H", 0, 3)
            + struct.pack("<L", len(source) + 1) + source.encode() + b"\0" + struct.pack("<L", len(data)) + data)
    return struct.pack("<L", len(body)) + body


def compressed_rtf(rtf: bytes) -> bytes:
    """*rtf* as PidTagRtfCompressed (MS-OXRTFCP) in its LZFu form, every byte a literal, then the end marker (a reference
    to the dictionary's write position); the CRC is left 0 (milterd does not check it)."""
    body, write = bytearray(), 207
    for start in range(0, len(rtf) + 1, 8):
        chunk = rtf[start:start + 8]
        if len(chunk) < 8:  # the last control byte: its literals, then the end marker's bit
            body += bytes([1 << len(chunk)]) + chunk + struct.pack(">H", ((write + len(chunk)) & 0xFFF) << 4)
            break
        body += b"\0" + chunk
        write = (write + 8) & 0xFFF
    return struct.pack("<LL4sL", len(body) + 12, len(rtf), b"LZFu", 0) + bytes(body)
