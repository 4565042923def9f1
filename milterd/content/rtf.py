"""What an RTF body shows: its text, the HTML it carries, and the targets of its links.

Outlook keeps a message's body as compressed RTF (MS-OXRTFCP), and an HTML
message often only as HTML encapsulated in that RTF (MS-OXRTFEX: ``\\fromhtml1``,
the HTML's tags in ``{\\*\\htmltag …}`` groups, the RTF-only rendering between
``\\htmlrtf`` and ``\\htmlrtf0``).  This is a reader for the link and text
rules, not a renderer: it decodes the escapes (``\\'hh`` in the document's
``\\ansicpg``, ``\\uN`` with its ``\\ucN`` stand-ins), skips destinations that
hold no text (font tables, pictures, unknown ``\\*`` groups, ``\\bin`` data),
joins what the HTML's groups hold, and reads each HYPERLINK field's target.
Per-font charsets (``\\fcharset``) are not followed: text in another codepage
than the document's comes out garbled (its links, being ASCII, do not).

The objects a document embeds (``{\\object…{\\*\\objdata hex}}``: OLE1 objects, MS-OLEDS 2.2.4) are read
apart (:func:`embedded_objects`), for the attachment policy: a Packager object's file runs on a double click.
Their data is read as Word reads it, quirks included (oletools' ``rtfobj`` mimics Word, and this follows it:
``\\bin`` data, ``\\'hh``, long control words, nested destinations), and data that is then no OLE1 object is
reported, not passed over: Word may make an object of it.

Our own decompressor, not the ``compressed_rtf`` package's: that one writes as
much as a sender's references make (each two bytes gives seventeen) and builds
a bit string per control byte.
"""

from __future__ import annotations

import binascii
import re
import struct
from dataclasses import dataclass, field
from typing import Callable

from .mimeparams import windows_codec

#: MS-OXRTFCP: the header (compressed size, raw size, kind, CRC), and the dictionary's first bytes.
_HEADER = struct.Struct("<LL4sL")
_DICTIONARY = (b"{\\rtf1\\ansi\\mac\\deff0\\deftab720{\\fonttbl;}{\\f0\\fnil \\froman \\fswiss \\fmodern \\fscript "
               b"\\fdecor MS Sans SerifSymbolArialTimes New RomanCourier{\\colortbl\\red0\\green0\\blue0\r\n\\par "
               b"\\pard\\plain\\f0\\fs20\\b\\i\\u\\tab\\tx")
#: One token: a hex escape, a Unicode escape, a control word and its parameter, a control symbol (a backslash before
#: a line end is a paragraph), a brace, text; line ends alone are nothing in RTF (one inside a link is no break).
_TOKEN = re.compile(rb"\\'([0-9a-fA-F]{2})|\\u(-?\d{1,6}) ?|\\([a-zA-Z]{1,32})(-?\d{1,10})? ?|\\(.)|([{}])|([^\\{}\r\n]+)|[\r\n]+", re.S)
#: The \fromhtml control word, not a literal "\\fromhtml" (its backslash escaped).
_FROM_HTML = re.compile(rb"(?:^|[^\\])(?:\\\\)*\\fromhtml")
#: Starred destinations whose text is read (unknown starred ones are skipped, as RTF readers skip them).
_TAGS = frozenset({b"htmltag", b"mhtmltag"})
#: Destinations that hold no text a reader sees.
_NO_TEXT = frozenset({b"fonttbl", b"colortbl", b"stylesheet", b"info", b"pict", b"object", b"objdata", b"themedata",
                      b"colorschememapping", b"datastore", b"latentstyles", b"listtable", b"listoverridetable", b"rsidtbl",
                      b"generator", b"xmlnstbl", b"filetbl", b"revtbl", b"header", b"footer"})
_BREAKS = {b"par": "\n", b"line": "\n", b"tab": "\t", b"cell": "\t", b"row": "\n", b"sect": "\n", b"page": "\n"}
_SYMBOLS = {b"{": "{", b"}": "}", b"\\": "\\", b"~": "\xa0", b"_": "-", b"\n": "\n", b"\r": "\n"}
#: HYPERLINK's switches that take an argument (\l a bookmark in the document, \o a tooltip, \t a target frame).
_SWITCH_ARGUMENTS = frozenset({"l", "o", "t"})
#: Most tokens read (about a second of CPU for a million): what follows is left unread.
MAX_TOKENS = 400_000
#: The control word of an embedded object's data (``{\\*\\objdata 0105…}``: hex digits).
_OBJDATA = re.compile(rb"(?<!\\)(?:\\\\)*(\\objdata)(?![a-zA-Z])")  # not an escaped backslash's text ("\\\\objdata")
#: An object's data is read as Word reads it, which oletools' rtfobj mimics (and this follows): a control word of up
#: to 250 letters with its parameter of any digits, the two at most 253 characters (what follows is text), and text.
_OBJECT_WORD = re.compile(rb"\\([a-zA-Z]{1,250})(-?\d+)?")
_OBJECT_WORD_SPAN = 254  # the backslash, then the control word and its parameter
_OBJECT_TEXT = re.compile(rb"[^{}\\]+")
#: A run of an object's text costs a token for every 2 ** this bytes, besides its own.
_TEXT_PER_TOKEN = 6
#: The destination control words of the RTF specification 1.9.1, as oletools' rtfobj lists them: one inside an
#: object's data opens a destination whose text is not the object's (at the object's own level, it ends the object's).
_DESTINATIONS = frozenset(b"""
    aftncn aftnsep aftnsepc annotation atnauthor atndate atnid atnparent atnref atrfend atrfstart author background
    bkmkend bkmkstart blipuid buptim category colorschememapping colortbl comment company creatim datafield datastore
    defchp defpap do doccomm docvar dptxbxtext ebcend ebcstart factoidname falt fchars ffdeftext ffentrymcr ffexitmcr
    ffformat ffhelptext ffl ffname ffstattext field file filetbl fldinst fldrslt fldtype fontemb fonttbl footer footerf
    footerl footerr footnote formfield ftncn ftnsep ftnsepc g generator gridtbl header headerf headerl headerr hl hlfr
    hlinkbase hlloc hlsrc hsv info keywords latentstyles lchars levelnumbers leveltext lfolevel linkval list listlevel
    listname listoverride listoverridetable listpicture liststylename listtable listtext lsdlockedexcept macc maccPr
    mailmerge malnScr manager margPr mbar mbarPr mbaseJc mbegChr mborderBox mborderBoxPr mbox mboxPr mchr mcount mctrlPr
    md mdeg mdegHide mden mdiff mdPr me mendChr meqArr meqArrPr mf mfName mfPr mfunc mfuncPr mgroupChr mgroupChrPr mgrow
    mhideBot mhideLeft mhideRight mhideTop mlim mlimLoc mlimLow mlimLowPr mlimUpp mlimUppPr mm mmaddfieldname mmathPict
    mmaxDist mmc mmcJc mmconnectstr mmconnectstrdata mmcPr mmcs mmdatasource mmheadersource mmmailsubject mmodso
    mmodsofilter mmodsofldmpdata mmodsomappedname mmodsoname mmodsorecipdata mmodsosort mmodsosrc mmodsotable mmodsoudl
    mmodsoudldata mmodsouniquetag mmPr mmquery mmr mnary mnaryPr mnoBreak mnum mobjDist moMath moMathPara moMathParaPr
    mopEmu mphant mphantPr mplcHide mpos mr mrad mradPr mrPr msepChr mshow mshp msPre msPrePr msSub msSubPr msSubSup
    msSubSupPr msSup msSupPr mstrikeBLTR mstrikeH mstrikeTLBR mstrikeV msub msubHide msup msupHide mtransp mtype mvertJc
    mvfmf mvfml mvtof mvtol mzeroAsc mzeroDesc mzeroWid nesttableprops nonesttables objalias objclass objdata object
    objname objsect oldcprops oldpprops oldsprops oldtprops oleclsid operator panose password passwordhash pgp pgptbl
    picprop pict pn pnseclvl pntext pntxta pntxtb printim propname protend protstart protusertbl result revtbl revtim rxe
    shp shpgrp shpinst shppict shprslt shptxt sn sp staticval stylesheet subject sv svb tc template themedata title txe
    ud upr userprops wgrffmtfilter windowcaption writereservation writereservhash xe xform xmlattrname xmlattrvalue
    xmlclose xmlname xmlnstbl xmlopen margSz pnaiu pnaiud""".split())
_NOT_HEX = bytes(byte for byte in range(256) if byte not in b"0123456789abcdefABCDEF")
_OPEN, _CLOSE, _BACKSLASH = b"{}\\"
#: OLE1 objects' format ids (MS-OLEDS 2.2.4): linked (no data of its own), embedded (its native data after its names).
_LINKED = 1
_EMBEDDED = 2


@dataclass
class RtfText:
    """What an RTF body shows."""

    text: str = ""
    #: Whether *text* is HTML (``\\fromhtml1``).
    html: bool = False
    #: The targets of its HYPERLINK fields, as written (a scheme may be missing).
    targets: list[str] = field(default_factory=list)
    #: False when MAX_TOKENS left the rest unread.
    whole: bool = True


@dataclass
class _Group:
    """What a group inherits and may change: whether its text is skipped, suppressed (``\\htmlrtf``), a field's
    instruction, an HTML tag's content; and its Unicode stand-in count (``\\ucN``)."""

    skip: bool = False
    suppressed: bool = False
    field: bool = False
    tag: bool = False
    stand_in: int = 1


@dataclass(frozen=True)
class EmbeddedObject:
    """An object embedded in an RTF document (OLE1, MS-OLEDS 2.2.4)."""

    #: Its class (``Package``: Packager's, an "embedded file"; ``Word.Document.8``…).
    class_name: str
    #: Its native data: for a Package what an ``\\x01Ole10Native`` stream holds after its size, for most others a Compound File.
    native: bytes


@dataclass
class EmbeddedObjects:
    """The objects an RTF document embeds, and what of their data was not read as one."""

    objects: list[EmbeddedObject] = field(default_factory=list)
    #: Bytes their data decoded to.
    decoded: int = 0
    #: False when the bytes allowed left the rest of the data unread.
    whole: bool = True
    #: Object data not read as an object (no OLE1 object, past the tokens read): Word may read one there.
    unread: list[str] = field(default_factory=list)


def embedded_objects(rtf: bytes, most: int, max_tokens: int = MAX_TOKENS) -> EmbeddedObjects:
    """The embedded objects of *rtf*, each ``\\objdata`` group's hex digits as Word reads them
    (:func:`_object_data`), at most *most* bytes in all.  A linked object has no data of its own: it is left out."""
    found = EmbeddedObjects()
    # Text is charged by its length (_object_data): the document read whole four times over, besides *max_tokens*.
    position, tokens = 0, max_tokens + 4 * (len(rtf) >> _TEXT_PER_TOKEN)
    while match := _OBJDATA.search(rtf, position):
        # From the control word on: an \objdata nested in this one's group is another object.
        start = match.start(1)
        position = match.end()
        readings, tokens = _object_data(rtf, start, tokens)
        if tokens < 0:
            found.unread.append(f"object data at byte {start} past the RTF tokens read, the rest not read")
            break
        for digits in readings:
            if found.decoded + len(digits) // 2 > most:
                found.whole = False
                return found
            data = binascii.unhexlify(digits[:len(digits) // 2 * 2])
            found.decoded += len(data)
            try:
                embedded = _ole1_object(data) if data else None
            except ValueError as exc:
                found.unread.append(f"object data at byte {start} not read as an object ({exc})")
                continue
            if embedded is not None:
                found.objects.append(embedded)
    return found


@dataclass
class _Reading:
    """One reading of an object's data: its hex digits, and the depth of the group whose text it skips (0: none)."""

    digits: bytearray = field(default_factory=bytearray)
    skipped: int = 0


def _object_data(rtf: bytes, start: int, tokens: int) -> tuple[list[bytes], int]:
    """The hex digits of the object data whose ``\\objdata`` is at *start*, read as Word reads them (as oletools'
    rtfobj has it): text but in a destination nested in it, the bytes of ``\\binN`` in hex, ``\\'hh`` taking the
    two characters after it and, after an odd count of digits, the last digit; up to its group's end, or a
    destination control word at its own level.  Whether Word skips a group opened by ``\\*`` whose control word
    opens no destination it knows (``{\\*\\x 41}``) is not known here: where it matters both readings are
    given.  With the tokens left of *tokens* (below 0 when they ran out first, the readings then cut short)."""
    # The specification's reading (a group opened by "\\*" skipped), and oletools' (only a destination's) forked from
    # it at the first "{\\*": legit data has none.
    readings = [_Reading()]
    word = _OBJECT_WORD.match(rtf, start, start + _OBJECT_WORD_SPAN)
    assert word is not None  # _OBJDATA found it
    position, depth = word.end(), 0  # the groups opened in it
    while position < len(rtf):
        tokens -= 1
        if tokens < 0:
            break
        byte = rtf[position]
        if byte == _OPEN:
            depth += 1
            position += 1
            if rtf.startswith(b"\\*", position):
                if len(readings) == 1:
                    readings.append(_Reading(bytearray(readings[0].digits), readings[0].skipped))
                readings[0].skipped = readings[0].skipped or depth
        elif byte == _CLOSE:
            if not depth:
                break
            for reading in readings:
                reading.skipped = 0 if reading.skipped == depth else reading.skipped
            depth -= 1
            position += 1
        elif byte != _BACKSLASH:
            text = _OBJECT_TEXT.match(rtf, position)
            assert text is not None  # neither a brace nor a backslash
            # Charged by its length too: each \objdata nested in another reads the rest of the outer one's group
            # again (600 nested in 10 MB: 6 GB read, 7 s of CPU, while a run of text is one token).
            tokens -= (text.end() - position) >> _TEXT_PER_TOKEN
            position = text.end()
            _read(readings, text.group().translate(None, _NOT_HEX))
        elif (word := _OBJECT_WORD.match(rtf, position, position + _OBJECT_WORD_SPAN)) is None:
            position += 2  # a control symbol
            if rtf[position - 1:position] == b"'":
                position += 2  # the two characters after it, whatever they are
                for reading in readings:
                    if not reading.skipped and len(reading.digits) % 2:
                        del reading.digits[-1]  # Word's reader (up to 2016 at least) drops it
        else:
            position = word.end()
            name, parameter = word.groups()
            if name == b"bin":
                position += rtf.startswith(b" ", position)
                data = rtf[position:position + max(int(parameter or 0), 0)]
                tokens -= len(data) >> _TEXT_PER_TOKEN
                _read(readings, data.hex().encode("ascii"))
                position += len(data)
            elif name in _DESTINATIONS:
                if not depth:
                    break
                for reading in readings:
                    reading.skipped = reading.skipped or depth
    return list(dict.fromkeys(bytes(reading.digits) for reading in readings)), tokens


def _read(readings: list[_Reading], digits: bytes) -> None:
    """*digits* added to each reading that is not skipping a group's text."""
    for reading in readings:
        if not reading.skipped:
            reading.digits += digits


def _ole1_object(data: bytes) -> EmbeddedObject | None:
    """The embedded object in *data* (its version, format id, class, topic and item names, then its native data's
    size and the data, cut short where *data* ends), or None for a linked object.  ``ValueError`` for another format
    or a header cut short: what Word makes of it is not known here."""
    try:
        _, format_id = struct.unpack_from("<2L", data)
        if format_id == _LINKED:
            return None
        if format_id != _EMBEDDED:
            raise ValueError(f"format id {format_id:#x}, no OLE1 object's")
        offset, names = 8, []
        for _ in range(3):  # the class, topic and item names: their length (with their NUL), then their bytes
            length = struct.unpack_from("<L", data, offset)[0]
            names.append(data[offset + 4:offset + 4 + length].split(b"\0", 1)[0].decode("cp1252", "replace"))
            offset += 4 + length
        size = struct.unpack_from("<L", data, offset)[0]
    except struct.error:
        raise ValueError(f"an OLE1 header cut short at {len(data)} bytes") from None
    return EmbeddedObject(names[0], data[offset + 4:offset + 4 + size])


def decompress(data: bytes, most: int) -> tuple[bytes, bool]:
    """Compressed RTF (MS-OXRTFCP: LZ77 references into a 4 KB dictionary), decompressed to at most *most* bytes,
    and whether it was whole.  The CRC is not checked: the links are read whatever it says.  ``ValueError`` for an
    unknown kind or a header cut short."""
    if len(data) < _HEADER.size:
        raise ValueError("a compressed RTF body cut short")
    _, raw_size, kind, _ = _HEADER.unpack_from(data)
    body = memoryview(data)[_HEADER.size:]
    if kind == b"MELA":  # stored as it is
        return bytes(body[:min(raw_size, most)]), raw_size <= most
    if kind != b"LZFu":
        raise ValueError(f"an RTF body compressed as {kind!r}")
    window = bytearray(_DICTIONARY.ljust(4096, b"\0"))
    write, out, position, end = len(_DICTIONARY), bytearray(), 0, len(body)
    while position < end:
        control = body[position]
        position += 1
        for bit in range(8):
            if position >= end:
                break
            if not control & (1 << bit):
                value = body[position]
                position += 1
                out.append(value)
                window[write] = value
                write = (write + 1) & 0xFFF
                continue
            if position + 2 > end:
                return bytes(out[:most]), len(out) <= most
            token = body[position] << 8 | body[position + 1]
            position += 2
            offset = token >> 4
            if offset == write:  # the end marker
                return bytes(out[:most]), len(out) <= most
            for step in range((token & 0xF) + 2):
                value = window[(offset + step) & 0xFFF]
                out.append(value)
                window[write] = value
                write = (write + 1) & 0xFFF
        if len(out) > most:
            return bytes(out[:most]), False
    return bytes(out[:most]), len(out) <= most


def read(rtf: bytes, max_tokens: int = MAX_TOKENS) -> RtfText:
    """What *rtf* shows: for RTF that carries HTML the HTML (its tags' groups joined, the RTF-only text left out),
    else its text; and its HYPERLINK fields' targets."""
    found = RtfText(html=_FROM_HTML.search(rtf[:4096]) is not None)
    out: list[str] = []
    fields: list[list[str]] = []
    group, stack = _Group(), []
    codec = "cp1252"
    opening = starred = False  # after "{" (and "\*"): the next control word may name a destination
    stand_ins = 0  # characters left to drop after a \uN
    high = 0  # a \uN high surrogate waiting for its low half
    position, tokens = 0, 0

    def emit(chunk: str) -> None:
        if group.field and not group.skip:
            fields[-1].append(chunk)
        elif not group.skip and not group.suppressed:
            out.append(chunk)

    while position < len(rtf):
        match = _TOKEN.match(rtf, position)
        if match is None:  # a lone backslash at the end
            break
        position = match.end()
        tokens += 1
        if tokens > max_tokens:
            found.whole = False
            break
        hexa, number, word, parameter, symbol, brace, text = match.groups()
        if brace is not None:
            if brace == b"{":
                stack.append(group)
                group = _Group(group.skip, group.suppressed, group.field, group.tag, group.stand_in)
                opening, starred = True, False
            elif stack:
                group = stack.pop()
            stand_ins = 0
            continue
        if symbol == b"*" and opening:
            starred = True
            continue
        if word is not None:
            if opening:
                if word in _NO_TEXT or (starred and word not in _TAGS and word != b"fldinst"):
                    group.skip = True
                elif starred and word in _TAGS:
                    group.tag = True
                elif word == b"fldinst":
                    group.field = True
                    fields.append([])
            opening = False
            _control(word, parameter, group, found.html, emit)
            if word == b"bin" and parameter:  # binary data: not text, and no token in it
                position += max(int(parameter), 0)
            elif word == b"ansicpg" and parameter:
                codec = windows_codec(int(parameter)) or codec
            continue
        opening = False
        if number is not None:
            value = int(number) % 65536
            stand_ins = group.stand_in
            if 0xD800 <= value < 0xDC00:
                high = value
                continue
            if 0xDC00 <= value < 0xE000 and high:
                value, high = 0x10000 + ((high - 0xD800) << 10) + (value - 0xDC00), 0
            emit(chr(value))
            continue
        if hexa is not None:
            chunk = bytes([int(hexa, 16)]).decode(codec, "replace")
        elif symbol is not None:
            chunk = _SYMBOLS.get(symbol, "")
        elif text is not None:
            chunk = text.decode(codec, "replace")
        else:
            continue  # line ends
        if stand_ins:
            dropped = min(stand_ins, len(chunk))
            chunk, stand_ins = chunk[dropped:], stand_ins - dropped
        emit(chunk)
    found.text = "".join(out)
    found.targets = [target for target in (_target("".join(chunk)) for chunk in fields) if target]
    return found


def _control(word: bytes, parameter: bytes | None, group: _Group, html: bool, emit: Callable[[str], None]) -> None:
    """A control word's effect on *group*, or the break it writes."""
    if word == b"htmlrtf":
        # Only in RTF that carries HTML, and not inside a tag's content (MS-OXRTFEX: ignored there).
        if html and not group.tag:
            group.suppressed = parameter != b"0"
    elif word == b"uc" and parameter is not None:
        group.stand_in = max(int(parameter), 0)
    elif word in _BREAKS:
        emit(_BREAKS[word])


def _target(instruction: str) -> str:
    """The target of a HYPERLINK field's instruction (``HYPERLINK "url" \\o "tip"``); "" for another field or one
    that only names a bookmark (``\\l``)."""
    words: list[tuple[str, str]] = re.findall(r'"([^"]*)"|(\S+)', instruction.strip())
    if not words or (words[0][1] or words[0][0]).upper() != "HYPERLINK":
        return ""
    skip_next = False
    for quoted, bare in words[1:]:
        value = str(quoted or bare)
        if skip_next:
            skip_next = False
            continue
        if not quoted and value.startswith("\\"):
            skip_next = value[1:2].lower() in _SWITCH_ARGUMENTS
            continue
        return value.strip()
    return ""
