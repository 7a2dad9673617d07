"""Header values of DICOM files, read fast: the tags MIMIR needs and how each is encoded.

Profiling showed pydicom's Dataset machinery dominating read time, so little-endian Part 10
files are walked here element by element, decoding only the wanted values (`scan_header`).
Anything else (another transfer syntax, encapsulated pixel data, a malformed element) gives
None, and the reader hands the file to pydicom, whose Dataset `values_from_dataset` turns into
the same values. `dicom_series` decides what to do with them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.multival import MultiValue

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

#: The last tag a header peek reads: what classifies a file (ImageType, SeriesDescription)
#: and names its series (SeriesInstanceUID, SeriesNumber) for a refusal's reason.
SERIES_NUMBER = 0x00200011
PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_DELIMITER, _SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
_IMPLICIT_LITTLE = "1.2.840.10008.1.2"
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_TAG = struct.Struct("<HH")
_UINT16 = struct.Struct("<H")
_UINT32 = struct.Struct("<L")
#: Group, element, VR and 16-bit length of an explicit-VR element in one unpack.
_EXPLICIT_HEADER = struct.Struct("<HH2sH")
#: Every valid VR (two upper-case letters) -> whether its length is 32 bits.
_VR_IS_LONG = {bytes((first, second)): bytes((first, second)) in _LONG_VRS for first in range(65, 91) for second in range(65, 91)}
#: Groups a DICOM file's first element may have: file meta (0002) or, in files without
#: meta information, the identifying group (0008) that every image holds.
_FIRST_GROUPS = (0x0002, 0x0008)
_TEXT, _CODES, _INTEGER_STRING, _DECIMALS, _UNSIGNED_SHORT = "text", "codes", "integer string", "decimals", "unsigned short"
#: Every header value classifying a file and describing a water/fat slice: tag -> (keyword, how it is encoded).
WANTED: dict[int, tuple[str, str]] = {
    0x00080008: ("ImageType", _CODES),
    0x00080031: ("SeriesTime", _TEXT),
    0x0008103E: ("SeriesDescription", _TEXT),
    0x0020000E: ("SeriesInstanceUID", _TEXT),
    0x00200011: ("SeriesNumber", _INTEGER_STRING),
    0x00200032: ("ImagePositionPatient", _DECIMALS),
    0x00200037: ("ImageOrientationPatient", _DECIMALS),
    0x00280002: ("SamplesPerPixel", _UNSIGNED_SHORT),
    0x00280008: ("NumberOfFrames", _INTEGER_STRING),
    0x00280010: ("Rows", _UNSIGNED_SHORT),
    0x00280011: ("Columns", _UNSIGNED_SHORT),
    0x00280030: ("PixelSpacing", _DECIMALS),
    0x00280100: ("BitsAllocated", _UNSIGNED_SHORT),
    0x00280103: ("PixelRepresentation", _UNSIGNED_SHORT),
    0x00281052: ("RescaleIntercept", _DECIMALS),
    0x00281053: ("RescaleSlope", _DECIMALS),
}
LAST_SLICE_TAG = max(WANTED)
#: What a header peek reads (the classifying and series-naming values).
PEEKED = {tag: wanted for tag, wanted in WANTED.items() if tag <= SERIES_NUMBER}


def could_be_dicom(head: bytes) -> bool:
    """Whether a file's first bytes can start DICOM: the 128-byte preamble and "DICM", or a
    dataset at byte 0 (what lenient reads accept), followed by a first element of group 0002
    or 0008. Anything else (zeros, text, other formats) is skipped without being decompressed
    further or handed to pydicom's forced read, which walks any bytes at ~0.4 s per MiB.
    """
    start = 132 if head[128:132] == b"DICM" else 0
    return len(head) >= start + 8 and _TAG.unpack_from(head, start)[0] in _FIRST_GROUPS


def values_from_dataset(dataset: Dataset, wanted: dict[int, tuple[str, str]]) -> dict[str, object]:
    values: dict[str, object] = {}
    for keyword, kind in wanted.values():
        value = dataset.get(keyword)
        if value is None or value == "":
            continue
        items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
        if kind == _DECIMALS:
            values[keyword] = [float(item) for item in items]
        elif kind == _CODES:
            values[keyword] = tuple(str(item).strip() for item in items)
        elif kind in (_INTEGER_STRING, _UNSIGNED_SHORT):
            values[keyword] = int(value)
        else:
            values[keyword] = str(value).strip()
    return values


class _NotSimple(Exception):
    """An encoding the fast scanner leaves to pydicom."""


@dataclass
class Scan:
    values: dict[str, object]
    #: False when the data ended before `last_tag` or PixelData was passed.
    complete: bool
    pixel_offset: int | None = None
    #: Where the walk stopped (the first element past `last_tag`) and in which encoding.
    stop: int = 0
    implicit: bool = False


def scan_header(data: bytes, last_tag: int) -> Scan | None:
    """Header values of a little-endian Part 10 file, walked without building a pydicom Dataset.

    Profiling showed pydicom's Dataset machinery dominating read time; this walk reads only
    element headers and the wanted values. None means "not the simple case": pydicom decides.
    """
    try:
        if data[128:132] != b"DICM":
            return None
        position, syntax = _scan_file_meta(data, 132)
        if syntax not in (_EXPLICIT_LITTLE, _IMPLICIT_LITTLE):
            return None
        return _scan_dataset(data, position, syntax == _IMPLICIT_LITTLE, last_tag)
    except (struct.error, _NotSimple, ValueError, UnicodeDecodeError):
        return None


def resume_scan(data: bytes, prefix: Scan, last_tag: int) -> Scan | None:
    """The scan `scan_header(data, last_tag)` gives, walking on from a complete prefix scan."""
    try:
        scan = _scan_dataset(data, prefix.stop, prefix.implicit, last_tag)
    except (struct.error, _NotSimple, ValueError, UnicodeDecodeError):
        return None
    scan.values = {**prefix.values, **scan.values}
    return scan


def _element_header(data: bytes, position: int, implicit: bool) -> tuple[int, int, int]:
    """(tag, value length, value position) of the element starting at `position`."""
    group, element = _TAG.unpack_from(data, position)
    tag = group << 16 | element
    if implicit or group == 0xFFFE:
        return tag, _UINT32.unpack_from(data, position + 4)[0], position + 8
    vr = data[position + 4 : position + 6]
    if not (len(vr) == 2 and 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise _NotSimple("invalid VR")
    if vr in _LONG_VRS:
        return tag, _UINT32.unpack_from(data, position + 8)[0], position + 12
    return tag, _UINT16.unpack_from(data, position + 6)[0], position + 8


def _scan_file_meta(data: bytes, position: int) -> tuple[int, str | None]:
    syntax = None
    while _TAG.unpack_from(data, position)[0] == 0x0002:
        tag, length, value = _element_header(data, position, implicit=False)
        if length == _UNDEFINED:
            raise _NotSimple("undefined length in file meta")
        if tag == 0x00020010:
            syntax = data[value : value + length].decode("ascii").strip("\x00 ")
        position = value + length
    return position, syntax


def _scan_dataset(data: bytes, position: int, implicit: bool, last_tag: int) -> Scan:
    values: dict[str, object] = {}
    end = len(data)
    while position + 8 <= end:
        if implicit:
            tag, length, value = _element_header(data, position, implicit)
        else:
            group, element, vr, length = _EXPLICIT_HEADER.unpack_from(data, position)
            long_vr = _VR_IS_LONG.get(vr)
            if long_vr is None or group == 0xFFFE:
                tag, length, value = _element_header(data, position, implicit)
            else:
                tag = group << 16 | element
                if long_vr:
                    length = _UINT32.unpack_from(data, position + 8)[0]
                    value = position + 12
                else:
                    value = position + 8
        if tag == PIXEL_DATA:
            if length == _UNDEFINED:
                raise _NotSimple("encapsulated pixel data")
            return Scan(values, complete=True, pixel_offset=value, stop=position, implicit=implicit)
        if tag > last_tag:
            return Scan(values, complete=True, stop=position, implicit=implicit)
        if length == _UNDEFINED:
            position = _skip_undefined(data, value, implicit)
            continue
        if value + length > end:
            break
        wanted = WANTED.get(tag)
        if wanted is not None:
            values[wanted[0]] = _decode_value(data[value : value + length], wanted[1])
        position = value + length
    return Scan(values, complete=False)


def _skip_undefined(data: bytes, position: int, implicit: bool) -> int:
    """Position after an undefined-length value: items up to the sequence delimiter."""
    while True:
        tag, length, value = _element_header(data, position, implicit)
        if tag == _SEQUENCE_DELIMITER:
            return value
        if tag != _ITEM:
            raise _NotSimple("unexpected element in undefined-length value")
        position = _skip_item(data, value, implicit) if length == _UNDEFINED else value + length


def _skip_item(data: bytes, position: int, implicit: bool) -> int:
    while True:
        tag, length, value = _element_header(data, position, implicit)
        if tag == _ITEM_DELIMITER:
            return value
        position = _skip_undefined(data, value, implicit) if length == _UNDEFINED else value + length


def _decode_value(raw: bytes, kind: str) -> object:
    if kind == _UNSIGNED_SHORT:
        return _UINT16.unpack_from(raw)[0]
    text = raw.decode("latin-1").strip("\x00 ")
    if kind == _CODES:
        return tuple(item.strip("\x00 ") for item in text.split("\\"))
    if kind == _DECIMALS:
        return [float(item) for item in text.split("\\")]
    if kind == _INTEGER_STRING:
        return int(float(text)) if text else 0
    return text


__all__ = [
    "LAST_SLICE_TAG",
    "PEEKED",
    "PIXEL_DATA",
    "SERIES_NUMBER",
    "WANTED",
    "Scan",
    "could_be_dicom",
    "resume_scan",
    "scan_header",
    "values_from_dataset",
]
