"""The structure of a JPEG 2000 codestream (ISO/IEC 15444-1 Annex A), checked before it is decoded.

OpenJPEG (behind pylibjpeg-openjpeg, Pillow and GDCM alike) decodes a damaged codestream without a word as long as it
finds its way through it, and none of these bindings offers a strict mode for damaged data or passes OpenJPEG's
warnings on. `check_codestream` walks the markers itself and refuses what the structure shows: no SOC and SIZ at the
start; a SIZ whose fields contradict each other; a marker that does not belong where it stands; a marker segment
whose length runs past the data; a tile-part whose length (Psot) runs past the EOC or does not end where the next
SOT or the EOC stands; tile-parts of a tile out of order (TPsot) or a tile of the SIZ grid missing; no COD or QCD in
the main header; no EOC at the end (only padding may follow it); and, inside the compressed tile data, a marker code
0xFF90-0xFFFF, which the bit stuffing of the MQ coder and of the packet headers never writes (SOP and EPH are allowed
where COD announces them). HTJ2K codestreams (a CAP marker) get every check but the last. TNsot (the announced number
of tile-parts) is not checked: real encoders get it wrong and OpenJPEG copes.

What it cannot see: bytes changed inside the compressed data (code-block segments, packet headers) that keep every
length and emulate no marker. JPEG 2000 Part 1 carries no checksum, and the DICOM files seen so far use none of its
optional error-resilience tools (segmentation symbols, predictable termination, SOP markers), so such a codestream
decodes to wrong pixels that no reader can tell from right ones (docs/cli.md, "Bad input", says so too).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

SOC, CAP, SIZ, COD, COC, TLM, PLM, PLT, CPF, QCD, QCC, RGN, POC, PPM, PPT, CRG, COM = (
    0xFF4F, 0xFF50, 0xFF51, 0xFF52, 0xFF53, 0xFF55, 0xFF57, 0xFF58, 0xFF59, 0xFF5C, 0xFF5D, 0xFF5E, 0xFF5F, 0xFF60,
    0xFF61, 0xFF63, 0xFF64)
SOT, SOP, EPH, SOD, EOC = 0xFF90, 0xFF91, 0xFF92, 0xFF93, 0xFFD9
_PART2 = set(range(0xFF70, 0xFF80))  # DCO, VMS, DFS, ADS, MCT, MCC, NLT, MCO, CBD, ATK... (15444-2, MC syntaxes)
_MAIN = {CAP, COD, COC, TLM, PLM, CPF, QCD, QCC, RGN, POC, PPM, CRG, COM} | _PART2  # main header (after SIZ)
_TILE = {COD, COC, QCD, QCC, RGN, POC, PPT, PLT, COM} | _PART2  # tile-part header
_NAMES = {SOC: "SOC", CAP: "CAP", SIZ: "SIZ", COD: "COD", COC: "COC", TLM: "TLM", PLM: "PLM", PLT: "PLT", CPF: "CPF",
          QCD: "QCD", QCC: "QCC", RGN: "RGN", POC: "POC", PPM: "PPM", PPT: "PPT", CRG: "CRG", COM: "COM", SOT: "SOT",
          SOP: "SOP", EPH: "EPH", SOD: "SOD", EOC: "EOC"}
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


@dataclass(frozen=True)
class Siz:
    """What the SIZ marker declares: the image size in pixels, the number of components and their precision."""

    columns: int
    rows: int
    components: int
    precision: int


class CodestreamError(ValueError):
    """The structure of a codestream is broken (the message says where)."""


def _name(marker: int) -> str:
    return _NAMES.get(marker, f"0x{marker:04X}")


def _u16(data: bytes, pos: int) -> int:
    if pos + 2 > len(data):
        raise CodestreamError(f"it ends inside a marker at offset {pos} ({len(data)} bytes): truncated")
    return struct.unpack_from(">H", data, pos)[0]


def codestream(data: bytes) -> bytes:
    """The codestream of a DICOM JPEG 2000 frame: ``data`` itself, or the contents of the ``jp2c`` box when a
    (non-conformant) JP2 file wrapper is around it."""
    if not data.startswith(_JP2_SIGNATURE):
        return data
    pos = 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        start = pos + 8
        if length == 1 and pos + 16 <= len(data):
            length, start = struct.unpack_from(">Q", data, pos + 8)[0], pos + 16
        end = len(data) if length == 0 else pos + length
        if length != 0 and end < start:
            break
        if kind == b"jp2c":
            return data[start:end]
        pos = end
    raise CodestreamError("it is a JP2 file without a codestream box (jp2c)")


def check_codestream(data: bytes) -> Siz:
    """The SIZ of a structurally sound codestream; `CodestreamError` saying what is broken otherwise."""
    data = codestream(data)
    if not data.startswith(b"\xff\x4f\xff\x51"):
        raise CodestreamError("it does not start with the SOC and SIZ markers (0xFF4F 0xFF51)")
    pos, seen, scod = 2, set(), 0
    siz = None
    while True:  # main header: marker segments up to the first SOT
        marker = _u16(data, pos)
        if marker == SOT:
            break
        if marker not in _MAIN and not (marker == SIZ and pos == 2):
            raise CodestreamError(f"it has {_found(marker)} at offset {pos} in the main header")
        body, end = _segment(data, pos, marker)
        if marker == SIZ:
            siz, tiles = _siz(body)
        elif marker == COD:
            scod |= _scod(body, pos)
        seen.add(marker)
        pos = end
    missing = [_name(m) for m in (COD, QCD) if m not in seen]
    if missing:
        raise CodestreamError(f"it has no {' or '.join(missing)} marker in its main header")
    high_throughput = CAP in seen
    body = data.rstrip(b"\0")  # DICOM pads a fragment to an even length with a zero byte (some writers: 0xFF)
    eoc = len(body) - (3 if body.endswith(b"\xff\xd9\xff") else 2)
    if eoc < pos or data[eoc:eoc + 2] != b"\xff\xd9":
        raise CodestreamError(f"it does not end with the EOC marker 0xFFD9 (its last bytes are "
                              f"{data[max(eoc, pos):eoc + 2].hex(' ').upper() or 'zeros'}): cut short or damaged")
    parts: dict[int, int] = {}  # tile index → tile-parts seen
    while pos < eoc:
        marker = _u16(data, pos)
        if marker != SOT:
            raise CodestreamError(f"it has {_found(marker)} at offset {pos}, where a tile-part (SOT) or the EOC "
                                  f"marker (offset {eoc}) belongs: a tile-part length (Psot) or the data is damaged")
        start = pos
        pos, tile, index = _tile_part(data, pos, eoc, tiles, scod, high_throughput)
        if index != parts.get(tile, 0):  # TNsot is not checked: some encoders write it wrong (OpenJPEG copes)
            raise CodestreamError(f"tile-part {index} of tile {tile} (offset {start}) comes after "
                                  f"{parts.get(tile, 0)} tile-part(s) of that tile: out of order or one is missing")
        parts[tile] = index + 1
    absent = [t for t in range(tiles) if t not in parts]
    if absent:
        raise CodestreamError(f"it lacks tile {absent[0]} of the {tiles} tiles its SIZ declares")
    assert siz is not None  # the SIZ segment follows SOC, checked above
    return siz


def _found(marker: int) -> str:
    return f"the marker {_name(marker)}" if marker >= 0xFF00 else f"the bytes 0x{marker:04X} where a marker belongs"


def _segment(data: bytes, pos: int, marker: int) -> tuple[bytes, int]:
    """(body, end) of the marker segment at ``pos``; its length must stay within the data."""
    length = _u16(data, pos + 2)
    end = pos + 2 + length
    if length < 2 or end > len(data):
        raise CodestreamError(f"{_name(marker)} marker segment at offset {pos} claims {length} bytes, past the end "
                              f"of the data ({len(data)} bytes)")
    return data[pos + 4:end], end


def _siz(body: bytes) -> tuple[Siz, int]:
    """(Siz, number of tiles) from a SIZ body, its fields checked against each other (A.5.1)."""
    if len(body) < 36:
        raise CodestreamError(f"SIZ marker segment is {len(body) + 2} bytes long, at least 38 needed")
    xsiz, ysiz, xo, yo, xt, yt, xto, yto, csiz = struct.unpack_from(">IIIIIIIIH", body, 2)
    if len(body) != 36 + 3 * csiz or csiz == 0:
        raise CodestreamError(f"SIZ declares {csiz} components in a segment of {len(body) + 2} bytes")
    if not (xsiz > xo and ysiz > yo and xt and yt and xto <= xo and yto <= yo and xto + xt > xo and yto + yt > yo):
        raise CodestreamError(f"SIZ geometry is impossible: image {xsiz} x {ysiz} from ({xo}, {yo}), tiles {xt} x "
                              f"{yt} from ({xto}, {yto})")
    components = np.frombuffer(body, np.uint8, offset=36).reshape(csiz, 3)
    if np.any(components[:, 1:] == 0) or np.any((components[:, 0] & 0x7F) > 37):
        raise CodestreamError("SIZ holds a component of precision above 38 bits or a sampling step of 0")
    tiles = -(-(xsiz - xto) // xt) * -(-(ysiz - yto) // yt)
    return Siz(xsiz - xo, ysiz - yo, csiz, int(components[0, 0] & 0x7F) + 1), tiles


def _scod(body: bytes, pos: int) -> int:
    if not body:
        raise CodestreamError(f"COD marker segment at offset {pos} is empty")
    return body[0]


def _tile_part(data: bytes, pos: int, eoc: int, tiles: int, scod: int,
               high_throughput: bool) -> tuple[int, int, int]:
    """(end, tile index, TPsot) of the tile-part at ``pos``, its header and data checked."""
    if _u16(data, pos + 2) != 10 or pos + 12 > len(data):
        raise CodestreamError(f"SOT marker segment at offset {pos} is not 12 bytes long")
    tile, psot, tpsot = struct.unpack_from(">HIB", data, pos + 4)
    if tile >= tiles:
        raise CodestreamError(f"tile-part at offset {pos} belongs to tile {tile}; the SIZ grid has {tiles} tiles")
    end = eoc if psot == 0 else pos + psot
    if psot and (psot < 14 or end > eoc):
        raise CodestreamError(f"tile-part at offset {pos} claims {psot} bytes (Psot), but the codestream ends at "
                              f"offset {eoc}: its length is damaged, or the data was cut or padded")
    head = pos + 12
    while True:  # tile-part header: marker segments up to SOD
        if head >= end:
            raise CodestreamError(f"tile-part at offset {pos} has no SOD marker within its {end - pos} bytes")
        marker = _u16(data, head)
        if marker == SOD:
            break
        if marker not in _TILE:
            raise CodestreamError(f"it has {_found(marker)} at offset {head} in the header of the tile-part at "
                                  f"offset {pos}")
        body, head = _segment(data, head, marker)
        if head > end:
            raise CodestreamError(f"{_name(marker)} marker segment at offset {head - len(body) - 4} runs past the "
                                  f"end of its tile-part")
        if marker == COD:
            scod |= _scod(body, head)
    if not high_throughput:
        _no_marker_in_data(data, head + 2, end, scod)
    return end, tile, tpsot


def _no_marker_in_data(data: bytes, start: int, end: int, scod: int) -> None:
    """Tile data must hold no marker code 0xFF90-0xFFFF but SOP/EPH where COD (Scod bits 1, 2) allows them."""
    if end - start < 2:
        return
    tail = np.frombuffer(data, np.uint8, count=end - start, offset=start)
    hits = np.flatnonzero((tail[:-1] == 0xFF) & (tail[1:] >= 0x90))
    allowed = [code for bit, code in ((2, 0x91), (4, 0x92)) if scod & bit]
    if allowed:
        hits = hits[~np.isin(tail[hits + 1], allowed)]
    if hits.size:
        at = start + int(hits[0])
        raise CodestreamError(f"it holds the marker code 0xFF{int(tail[hits[0] + 1]):02X} inside its compressed tile "
                              f"data at offset {at} ({hits.size} in all), which the JPEG 2000 coder never writes "
                              "there")
