"""First-pass alert scanning: what first-detection selection needs, without decoding the rest.

Selection (:mod:`transforms.selection`) needs four things of every alert: ``objectId``,
``candid``, ``candidate.jd`` and whether ``prv_candidates`` holds a detection earlier than the
alert. A full decode builds ~60 Python objects per history entry and copies three cutouts per
alert only to throw them away; :func:`scan_alerts` reads those four things and steps over the
rest of the encoding.

How: each writer schema (parsed once per process, like :func:`transforms.alerts._writer_for`)
is compiled into a *plan*. Runs of fields whose encodings a regular expression can describe
(nulls, numbers, booleans, enums, unions of them and ASCII strings shorter than 256 bytes, which
is every field of a ZTF candidate or history entry) become one compiled :mod:`re` pattern, so a
whole ``prv_candidates`` entry is stepped over by one C-level ``match`` and its ``candid`` and
``jd`` are read from two capture groups. Cutout bytes are skipped by their length prefix.

Agreement with :func:`transforms.alerts.decode_alerts` is by construction, not by imitation: the
fast path accepts only encodings whose meaning is unambiguous (canonical one-byte union and enum
indices, canonical string lengths, ASCII text, lengths inside the block, at most 9-byte
varints where a value is read). On anything else (junk, truncation, a 300-byte or non-ASCII
string, a ``null`` where selection needs a value) it gives up on that record and decodes it
with the same ``fastavro.schemaless_reader`` call ``decode_alerts`` makes, raising the same
error. Negative array block counts are followed by a byte size which fastavro reads and
ignores, decoding every item; the scanner does the same rather than jump by that size. The
container
framing (header, blocks, codecs, sync markers, stray bytes) reuses the functions of
:mod:`transforms.alerts` and raises the same :class:`~transforms.alerts.AlertDecodeError`
codes and texts. A writer schema the planner does not handle (no record at the top, a candidate
that is not a flat record, ...) is scanned by ``decode_alerts`` itself.
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import fastavro

from transforms.alerts import (
    AVRO_MAGIC,
    SYNC_SIZE,
    Alert,
    AlertDecodeError,
    _check_record,
    _decompress,
    _read_header,
    _Reader,
    _Writer,
    _writer_for,
    decode_alerts,
    iter_alerts,
)
from transforms.schema import REQUIRED_ALERT_FIELDS, REQUIRED_CANDIDATE_FIELDS
from transforms.surveys import ZTF

#: ZTF record fields only selection reads (the fast paths are ZTF's; other surveys decode in full).
_HISTORY_FIELDS = ZTF.history_fields

__all__ = ["Scanned", "scan_alerts", "scan_counts", "slim_alerts"]


class Scanned(NamedTuple):
    """What the first pass keeps of one alert.

    Attributes
    ----------
    object_id
        ``objectId``.
    candid
        ``candid`` (the alert's own).
    jd
        ``candidate.jd`` [day].
    earlier_detection
        True when ``prv_candidates`` holds an entry with a non-null ``candid`` and a non-null
        ``jd`` earlier than :attr:`jd`, i.e. when
        :func:`transforms.rules.history_skip_reason` is not None.
    source
        As :attr:`transforms.alerts.Alert.source`.
    path
        As :attr:`transforms.alerts.Alert.path`.
    """

    object_id: str
    candid: int
    jd: float
    earlier_detection: bool
    source: str
    path: str


class _Bail(Exception):
    """The fast path met an encoding it does not vouch for: decode this record exactly.

    Raised as a fresh instance each time: re-raising one shared instance would chain every
    raise's frames (and the buffers they hold) onto its traceback for good.
    """


class _Unsupported(Exception):
    """A writer schema the planner does not compile: scan its containers with decode_alerts."""


_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = ("record", "error", "enum", "fixed")
#: Strings the patterns describe are shorter than 64 * (1 + this) bytes [256]. ZTF's history file
#: names are 94 bytes (131 in IPAC's 2016 test alerts); a longer string sends its record to the
#: exact path. Each step up costs ~64 alternatives per string field in every compiled pattern.
_STRING_HIGH = 3
#: Most union branches / enum symbols with a one-byte canonical index (zig-zag 2*i < 128).
_MAX_ONE_BYTE_INDEX = 63
#: Bound on distinct writer schemas kept per process, as ``transforms.alerts._MAX_WRITERS``.
_MAX_PLANS = 64

_DOUBLE = struct.Struct("<d").unpack_from
_FLOAT = struct.Struct("<f").unpack_from
_INF = float("inf")

# How many records took which path (see scan_counts): fast, exact (fastavro), container fallback.
_COUNTS = {"fast": 0, "exact": 0, "fallback": 0}


def scan_counts() -> dict[str, int]:
    """Records scanned so far in this process, by path.

    Returns
    -------
    dict
        ``fast`` (scanned by a plan), ``exact`` (a record the plan gave up on, decoded by
        fastavro) and ``fallback`` (records of containers whose schema has no plan, scanned by
        ``decode_alerts``). For tests and benchmarks: real ZTF alerts should all be ``fast``.
    """
    return dict(_COUNTS)


# --- byte-level helpers ---------------------------------------------------------------------------
def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Zig-zag varint at ``pos``; bails past ``end`` or beyond 9 bytes (fastavro's 64-bit
    arithmetic wraps there, which is not worth imitating)."""
    acc = 0
    shift = 0
    while pos < end:
        b = buf[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if b < 0x80:
            return (acc >> 1) ^ -(acc & 1), pos
        shift += 7
        if shift > 56:
            raise _Bail
    raise _Bail


def _block_count(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Item count of the array or map block at ``pos`` (0: the end), and where its items start.

    A negative count is followed by the block's size in bytes: fastavro reads it and ignores it,
    decoding every item, and so does the scanner (a wrong size must not make it disagree).
    """
    count, pos = _varint(buf, pos, end)
    if count < 0:
        count = -count
        _, pos = _varint(buf, pos, end)
    return count, pos


def _varint_end(buf: bytes, pos: int, end: int) -> int:
    """End of the varint at ``pos``, of any length (fastavro reads until a byte < 0x80)."""
    while pos < end:
        if buf[pos] < 0x80:
            return pos + 1
        pos += 1
    raise _Bail


def _skip_nothing(buf: bytes, pos: int, end: int) -> int:
    return pos


def _skip_bytes(buf: bytes, pos: int, end: int) -> int:
    n, pos = _varint(buf, pos, end)
    pos += n
    if n < 0 or pos > end:  # fastavro would fail (EOFError); let it say so
        raise _Bail
    return pos


def _skip_string(buf: bytes, pos: int, end: int) -> int:
    n, start = _varint(buf, pos, end)
    pos = start + n
    if n < 0 or pos > end:
        raise _Bail
    try:
        buf[start:pos].decode()  # fastavro decodes strictly: invalid UTF-8 is its error
    except UnicodeDecodeError:
        raise _Bail from None
    return pos


def _read_string(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    n, start = _varint(buf, pos, end)
    pos = start + n
    if n < 0 or pos > end:
        raise _Bail
    try:
        return buf[start:pos].decode(), pos
    except UnicodeDecodeError:
        raise _Bail from None


def _read_long(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    return _varint(buf, pos, end)


def _read_null(buf: bytes, pos: int, end: int) -> tuple[None, int]:
    return None, pos


def _read_double(buf: bytes, pos: int, end: int) -> tuple[float, int]:
    if pos + 8 > end:
        raise _Bail
    return _DOUBLE(buf, pos)[0], pos + 8


def _read_float(buf: bytes, pos: int, end: int) -> tuple[float, int]:
    if pos + 4 > end:
        raise _Bail
    return _FLOAT(buf, pos)[0], pos + 4


def _lit(b: int) -> bytes:
    """A pattern matching the single byte ``b``."""
    return b"\\x%02x" % b


def _index_byte(i: int) -> int:
    """Canonical encoding of a small non-negative index (one zig-zag varint byte)."""
    return 2 * i


_VARINT_RE = rb"[\x80-\xff]*[\x00-\x7f]"  # same extent as fastavro: up to the first byte < 0x80


def _string_pattern() -> bytes:
    # Patterns cannot count, so a string is one alternative per length, each keyed on its
    # canonical length prefix (sre rejects a literal-prefixed alternative in a few ns). Two-byte
    # prefixes (lengths 64..) nest: the first byte carries the length's low bits, the second its
    # multiple of 64, and since the text is uniform (ASCII) the count can simply be summed.
    def ascii_run(n: int) -> bytes:
        return rb"[\x00-\x7f]" + (b"{%d}" % n if n > 1 else b"") if n else b""

    alts = [_lit(2 * n) + ascii_run(n) for n in range(64)]
    for low in range(64):
        high = [_lit(h) + ascii_run(64 * h + low) for h in range(1, _STRING_HIGH + 1)]
        alts.append(_lit(0x80 | 2 * low) + b"(?:" + b"|".join(high) + b")")
    return b"(?:" + b"|".join(alts) + b")"


_STRING_RE = _string_pattern()  # ASCII only: ASCII is valid UTF-8, anything else goes exact
_PRIMITIVE_RE: dict[str, bytes | None] = {
    "null": b"",
    "boolean": b".",  # fastavro reads any byte (non-zero is True)
    "int": _VARINT_RE,  # fastavro does not range-check ints
    "long": _VARINT_RE,
    "float": b"....",  # spelled out: four ANY ops beat one REPEAT in sre
    "double": b"........",
    "string": _STRING_RE,
    "bytes": None,  # cutouts: skipped by length, never worth a pattern
}

Skip = Callable[[bytes, int, int], int]
Read = Callable[[bytes, int, int], tuple[Any, int]]
At = Callable[[bytes, int], Any]  # value of a captured field from its group's start


# --- compiling a writer schema --------------------------------------------------------------------
class _Compiler:
    """Turns (parts of) one parsed writer schema into skip / read / capture functions."""

    def __init__(self, parsed: Any) -> None:
        self.named: dict[str, dict] = {}
        self._regex: dict[int, bytes | None] = {}
        self._active: set[int] = set()
        self._register(parsed)

    def _register(self, node: Any) -> None:
        # parse_schema writes each named type in full once and refers to it by name after, in
        # document order; collect the definitions first so references resolve in any order.
        if isinstance(node, list):
            for branch in node:
                self._register(branch)
        elif isinstance(node, dict):
            t = node.get("type")
            if t in _NAMED and isinstance(node.get("name"), str):
                self.named.setdefault(node["name"], node)
            if t in ("record", "error"):
                for f in node.get("fields", []):
                    self._register(f.get("type"))
            elif t == "array":
                self._register(node.get("items"))
            elif t == "map":
                self._register(node.get("values"))
            elif isinstance(t, dict | list):
                self._register(t)

    def resolve(self, node: Any) -> Any:
        """A primitive name, a union list, or a complex / logical-type dict."""
        for _ in range(64):
            if isinstance(node, str):
                if node in _PRIMITIVES:
                    return node
                if node in self.named:
                    return self.named[node]
                raise _Unsupported(f"unknown type {node!r}")
            if isinstance(node, list):
                return node
            if not isinstance(node, dict):
                break
            t = node.get("type")
            if t in _NAMED or t in ("array", "map"):
                return node
            if isinstance(t, str) and t in _PRIMITIVES:
                return node if "logicalType" in node else t
            node = t  # {"type": {...}} wrapper
        raise _Unsupported(f"cannot resolve type {node!r}")

    # patterns
    def regex(self, node: Any) -> bytes | None:
        """Pattern source for ``node``'s encoding, or None when it is skipped in Python."""
        node = self.resolve(node)
        if isinstance(node, str):
            return _PRIMITIVE_RE[node]
        key = id(node)
        if key in self._regex:
            return self._regex[key]
        if key in self._active:
            raise _Unsupported("recursive type")
        self._active.add(key)
        try:
            out = self._regex_of(node)
        finally:
            self._active.discard(key)
        self._regex[key] = out
        return out

    def _regex_of(self, node: Any) -> bytes | None:
        if isinstance(node, list):
            if not node or len(node) > _MAX_ONE_BYTE_INDEX:
                return None
            parts = []
            for i, branch in enumerate(node):
                frag = self.regex(branch)
                if frag is None:
                    return None
                parts.append((frag == b"", _lit(_index_byte(i)) + frag))
            # Null branches last: sre keeps a backtracking point for every alternative but the
            # last, and ZTF values are mostly present (the real alerts scan 1.4x faster so).
            parts.sort(key=lambda p: p[0])
            return b"(?:" + b"|".join(p for _, p in parts) + b")"
        t = node["type"]
        if "logicalType" in node and t not in ("record", "error", "array", "map", "enum"):
            return None  # converted by fastavro, which may refuse the value: delegated
        if t in ("record", "error"):
            frags = []
            for f in node["fields"]:
                frag = self.regex(f["type"])
                if frag is None:
                    return None
                frags.append(frag)
            return b"".join(frags)
        if t == "enum":
            n = len(node["symbols"])
            if not 0 < n <= _MAX_ONE_BYTE_INDEX:
                return None
            return b"[" + b"".join(_lit(_index_byte(i)) for i in range(n)) + b"]"
        if t == "fixed":
            size = int(node["size"])
            return b".{%d}" % size if size else b""
        return None  # array, map

    @staticmethod
    def pattern(frag: bytes) -> re.Pattern[bytes]:
        """Compiled ``frag`` (``.`` is any byte)."""
        return re.compile(b"(?s)" + frag)

    # skipping
    def skipper(self, node: Any) -> Skip:
        """A function ``(buf, pos, end) -> pos`` stepping over one value of ``node``."""
        frag = self.regex(node)
        if frag is not None:
            return self._pattern_skipper(frag)
        node = self.resolve(node)
        if node == "bytes":
            return _skip_bytes
        if isinstance(node, list):
            return self._union_skipper([self.skipper(b) for b in node])
        t = node["type"]
        if "logicalType" in node and t not in ("record", "error", "array", "map", "enum"):
            return self._delegate(node)
        if t in ("record", "error"):
            return self.fields_skipper([f["type"] for f in node["fields"]])
        if t == "array":
            return self._array_skipper(node["items"])
        if t == "map":
            return self._map_skipper(node["values"])
        if t == "enum":
            return self._enum_skipper(len(node["symbols"]))
        raise _Unsupported(f"cannot skip {t!r}")

    def _pattern_skipper(self, frag: bytes) -> Skip:
        if not frag:
            return _skip_nothing
        match = self.pattern(frag).match

        def skip(buf: bytes, pos: int, end: int) -> int:
            m = match(buf, pos, end)
            if m is None:
                raise _Bail
            return m.end()

        return skip

    def fields_skipper(self, types: list[Any]) -> Skip:
        """Skip consecutive values of ``types``: runs with patterns become one pattern."""
        steps: list[Skip] = []
        run: list[bytes] = []
        for t in types:
            frag = self.regex(t)
            if frag is not None:
                run.append(frag)
                continue
            if run:
                steps.append(self._pattern_skipper(b"".join(run)))
                run = []
            steps.append(self.skipper(t))
        if run:
            steps.append(self._pattern_skipper(b"".join(run)))
        steps = [s for s in steps if s is not _skip_nothing]
        if not steps:
            return _skip_nothing
        if len(steps) == 1:
            return steps[0]
        fixed = tuple(steps)

        def skip(buf: bytes, pos: int, end: int) -> int:
            for step in fixed:
                pos = step(buf, pos, end)
            return pos

        return skip

    @staticmethod
    def _union_skipper(branches: list[Skip]) -> Skip:
        limit = 2 * len(branches)
        table = tuple(branches)

        def skip(buf: bytes, pos: int, end: int) -> int:
            if pos >= end:
                raise _Bail
            b = buf[pos]
            if b & 1 or b >= limit:  # negative, multi-byte or out of range: fastavro decides
                raise _Bail
            return table[b >> 1](buf, pos + 1, end)

        return skip

    def _array_skipper(self, items: Any) -> Skip:
        frag = self.regex(items)
        if frag is not None and frag:
            match = self.pattern(frag).match

            def skip(buf: bytes, pos: int, end: int) -> int:
                while True:
                    count, pos = _block_count(buf, pos, end)
                    if count == 0:
                        return pos
                    for _ in range(count):
                        m = match(buf, pos, end)
                        if m is None:
                            raise _Bail
                        pos = m.end()

            return skip
        item = self.skipper(items)

        def skip_items(buf: bytes, pos: int, end: int) -> int:
            while True:
                count, pos = _block_count(buf, pos, end)
                if count == 0:
                    return pos
                if count > end - pos and item is _skip_nothing:
                    raise _Bail  # items of no bytes: leave absurd counts to fastavro
                for _ in range(count):
                    pos = item(buf, pos, end)

        return skip_items

    def _map_skipper(self, values: Any) -> Skip:
        value = self.skipper(values)

        def skip(buf: bytes, pos: int, end: int) -> int:
            while True:
                count, pos = _block_count(buf, pos, end)
                if count == 0:
                    return pos
                for _ in range(count):
                    pos = value(buf, _skip_string(buf, pos, end), end)

        return skip

    @staticmethod
    def _enum_skipper(n: int) -> Skip:
        def skip(buf: bytes, pos: int, end: int) -> int:
            index, pos = _varint(buf, pos, end)
            if not 0 <= index < n:  # fastavro indexes a list: negatives would "work"
                raise _Bail
            return pos

        return skip

    def _delegate(self, node: dict) -> Skip:
        """A logical-type value: fastavro converts it and may refuse it, so let it convert."""
        try:
            parsed = fastavro.parse_schema(node)
        except Exception as e:
            raise _Unsupported(f"logical type {node!r}: {e}") from e
        t = node["type"]
        if t in ("int", "long"):
            span = _varint_end
        elif t in ("bytes", "string"):
            span = _skip_bytes
        elif t == "fixed":
            size = int(node["size"])

            def span(buf: bytes, pos: int, end: int) -> int:
                if pos + size > end:
                    raise _Bail
                return pos + size

        else:
            raise _Unsupported(f"logical type on {t!r}")
        reader = fastavro.schemaless_reader

        def skip(buf: bytes, pos: int, end: int) -> int:
            stop = span(buf, pos, end)
            bio = io.BytesIO(buf[pos:stop])
            reader(bio, parsed, None)  # any error: the record goes exact, which raises it
            if bio.tell() != stop - pos:
                raise _Bail
            return stop

        return skip

    # reading values
    def reader(self, node: Any) -> Read:
        """``(buf, pos, end) -> (value, pos)`` for a string / number / null field."""
        node = self.resolve(node)
        if isinstance(node, list):
            if not node or len(node) > _MAX_ONE_BYTE_INDEX:
                raise _Unsupported("union too wide")
            table = tuple(self.reader(b) for b in node)
            limit = 2 * len(table)

            def read(buf: bytes, pos: int, end: int) -> tuple[Any, int]:
                if pos >= end:
                    raise _Bail
                b = buf[pos]
                if b & 1 or b >= limit:
                    raise _Bail
                return table[b >> 1](buf, pos + 1, end)

            return read
        simple = {
            "string": _read_string,
            "long": _read_long,
            "int": _read_long,
            "null": _read_null,
            "double": _read_double,
            "float": _read_float,
        }
        if isinstance(node, str) and node in simple:
            return simple[node]
        raise _Unsupported(f"cannot read {node!r}")

    def value_at(self, node: Any) -> At:
        """``(buf, start) -> value`` of a field a pattern matched (canonical, in bounds)."""
        node = self.resolve(node)
        if isinstance(node, list):
            table = tuple(self.value_at(b) for b in node)
            return lambda buf, s: table[buf[s] >> 1](buf, s + 1)
        if node == "double":
            return lambda buf, s: _DOUBLE(buf, s)[0]
        if node == "float":
            return lambda buf, s: _FLOAT(buf, s)[0]
        if node in ("int", "long"):
            return lambda buf, s: _varint(buf, s, len(buf))[0]
        if node == "null":
            return lambda buf, s: None
        raise _Unsupported(f"cannot compare {node!r}")

    def null_at(self, node: Any) -> At | None:
        """``(buf, start) -> is None`` of a matched field, or None when it can never be null."""
        node = self.resolve(node)
        if node == "null":
            return lambda buf, s: True
        if not isinstance(node, list):
            return None
        nulls = frozenset(_index_byte(i) for i, b in enumerate(node) if self.resolve(b) == "null")
        if not nulls:
            return None
        return lambda buf, s: buf[s] in nulls

    def captured(self, record: dict, names: tuple[str, ...]) -> tuple[bytes, dict[str, tuple]]:
        """Pattern source for a whole record with a named group per field of ``names`` it has.

        Returns the source and ``{field name: (group name, field type)}``.
        """
        frags = []
        fields = {}
        for f in record["fields"]:
            frag = self.regex(f["type"])
            if frag is None:
                raise _Unsupported(f"{record.get('name')}.{f['name']} is not flat")
            if f["name"] in names:
                group = f"f{len(fields)}"
                fields[f["name"]] = (group, f["type"])
                frag = b"(?P<%s>%s)" % (group.encode(), frag)
            frags.append(frag)
        return b"".join(frags), fields


def _records_in(c: _Compiler, node: Any) -> tuple[dict | None, int | None, int]:
    """For a record or a union of null and one record: (record, null branch byte, #branches)."""
    node = c.resolve(node)
    if isinstance(node, dict) and node["type"] in ("record", "error"):
        return node, None, 0
    if isinstance(node, list) and len(node) == 2:
        kinds = [c.resolve(b) for b in node]
        for i, k in enumerate(kinds):
            other = kinds[1 - i]
            if k == "null" and isinstance(other, dict) and other["type"] in ("record", "error"):
                return other, _index_byte(i), 2
    return None, None, 0


def _candidate_reader(c: _Compiler, node: Any) -> Callable[[bytes, int, int], tuple[int, Any]]:
    """``(buf, pos, end) -> (pos, jd)``; bails when a required candidate field is null."""
    record, null_byte, branches = _records_in(c, node)
    if record is None:
        raise _Unsupported("candidate is not a record")
    frag, fields = c.captured(record, REQUIRED_CANDIDATE_FIELDS)
    pattern = c.pattern(frag)
    match = pattern.match
    groups = {k: (pattern.groupindex[g], t) for k, (g, t) in fields.items()}
    if any(name not in groups for name in REQUIRED_CANDIDATE_FIELDS):
        # Every record then fails decode_alerts' check; the exact path says how.
        def lacking(buf: bytes, pos: int, end: int) -> tuple[int, Any]:
            raise _Bail

        return lacking
    checks = []
    for name in REQUIRED_CANDIDATE_FIELDS:
        index, t = groups[name]
        is_null = c.null_at(t)
        if is_null is not None:
            checks.append((index, is_null))
    jd_index, jd_type = groups["jd"]
    jd_at = c.value_at(jd_type)
    checks_t = tuple(checks)
    limit = 2 * branches

    def read(buf: bytes, pos: int, end: int) -> tuple[int, Any]:
        if branches:
            if pos >= end:
                raise _Bail
            b = buf[pos]
            if b & 1 or b >= limit or b == null_byte:  # a null candidate fails the check
                raise _Bail
            pos += 1
        m = match(buf, pos, end)
        if m is None:
            raise _Bail
        for index, is_null in checks_t:
            if is_null(buf, m.start(index)):
                raise _Bail
        return m.end(), jd_at(buf, m.start(jd_index))

    return read


def _history_reader(c: _Compiler, node: Any) -> Callable[[bytes, int, int], tuple[int, float]]:
    """``(buf, pos, end) -> (pos, earliest detection jd)`` over ``prv_candidates``.

    The earliest jd of entries with a non-null ``candid`` and ``jd`` (``inf`` if none): an
    earlier detection exists exactly when it is below the alert's jd, whichever field comes
    first in the schema (NaN entries never compare below, as in ``history_skip_reason``).
    Entries may be records or ``[record, null]`` unions (Spark-written schemas); a null entry
    holds no detection.
    """
    array, null_byte, branches = _array_in(c, node)
    if array is None:
        return lambda buf, pos, end: (pos, _INF)  # a field that is always null
    limit = 2 * branches
    record, entry_null, entry_branches = _records_in(c, array["items"])
    names = ("candid", "jd")
    if record is None or any(n not in {f["name"] for f in record["fields"]} for n in names):
        # Entries that cannot hold a detection: only step over them.
        skip_array = c.skipper(array)

        def skip_only(buf: bytes, pos: int, end: int) -> tuple[int, float]:
            if limit:
                if pos >= end:
                    raise _Bail
                b = buf[pos]
                if b & 1 or b >= limit:
                    raise _Bail
                pos += 1
                if b == null_byte:
                    return pos, _INF
            return skip_array(buf, pos, end), _INF

        return skip_only
    frag, fields = c.captured(record, names)
    if entry_branches:
        alts = [b"", b""]
        alts[entry_null >> 1] = _lit(entry_null)
        alts[1 - (entry_null >> 1)] = _lit(_index_byte(1 - (entry_null >> 1))) + frag
        frag = b"(?:" + b"|".join(alts) + b")"
    pattern = c.pattern(frag)
    match = pattern.match
    ci = pattern.groupindex[fields["candid"][0]]
    ji = pattern.groupindex[fields["jd"][0]]
    candid_null = c.null_at(fields["candid"][1]) or (lambda buf, s: False)
    jd_at = c.value_at(fields["jd"][1])  # None for a null jd, which never counts
    candid_t = c.resolve(fields["candid"][1])
    nulls = (
        [_index_byte(i) for i, b in enumerate(candid_t) if c.resolve(b) == "null"]
        if (isinstance(candid_t, list))
        else []
    )

    if c.resolve(fields["jd"][1]) == "double" and len(nulls) <= 1 and candid_t != "null":
        # ZTF's own layout (jd a double, candid [null, long]): the same test, no calls.
        cn = nulls[0] if nulls else -1
        unpack = _DOUBLE

        def entries(buf: bytes, pos: int, end: int, count: int, earliest: float) -> tuple:
            for _ in range(count):
                m = match(buf, pos, end)
                if m is None:
                    raise _Bail
                pos = m.end()
                s = m.start(ci)
                if s >= 0 and buf[s] != cn:  # s < 0: a null entry
                    jd = unpack(buf, m.start(ji))[0]
                    if jd < earliest:
                        earliest = jd
            return pos, earliest

    else:

        def entries(buf: bytes, pos: int, end: int, count: int, earliest: float) -> tuple:
            for _ in range(count):
                m = match(buf, pos, end)
                if m is None:
                    raise _Bail
                pos = m.end()
                s = m.start(ci)
                if s >= 0 and not candid_null(buf, s):
                    jd = jd_at(buf, m.start(ji))
                    if jd is not None and jd < earliest:
                        earliest = jd
            return pos, earliest

    def read(buf: bytes, pos: int, end: int) -> tuple[int, float]:
        if limit:
            if pos >= end:
                raise _Bail
            b = buf[pos]
            if b & 1 or b >= limit:
                raise _Bail
            pos += 1
            if b == null_byte:
                return pos, _INF
        earliest = _INF
        while True:
            count, pos = _block_count(buf, pos, end)
            if count == 0:
                return pos, earliest
            pos, earliest = entries(buf, pos, end, count, earliest)

    return read


def _array_in(c: _Compiler, node: Any) -> tuple[dict | None, int | None, int]:
    """For an array or a union of null and one array: (array, null branch byte, #branches);
    (None, ..) for a plain null."""
    node = c.resolve(node)
    if node == "null":
        return None, None, 0
    if isinstance(node, dict) and node["type"] == "array":
        return node, None, 0
    if isinstance(node, list) and len(node) == 2:
        kinds = [c.resolve(b) for b in node]
        for i, k in enumerate(kinds):
            other = kinds[1 - i]
            if k == "null" and isinstance(other, dict) and other["type"] == "array":
                return other, _index_byte(i), 2
    raise _Unsupported("prv_candidates is not an array or [null, array]")


_OBJECT_ID, _CANDID, _CANDIDATE, _HISTORY, _SKIP = range(5)


class _Plan:
    """One writer schema, compiled.

    ``scan(buf, pos, end)`` reads the record at ``pos`` and returns ``(end of the record,
    object_id, candid, jd, earlier detection)``, or raises (the caller then decodes exactly).
    """

    __slots__ = ("steps",)

    def __init__(self, parsed: Any) -> None:
        c = _Compiler(parsed)
        top = c.resolve(parsed)
        if not (isinstance(top, dict) and top["type"] in ("record", "error")):
            raise _Unsupported("top level is not a record")
        if not set(REQUIRED_ALERT_FIELDS) <= {"objectId", "candid", "candidate"}:
            raise _Unsupported("required alert fields the planner does not know")
        steps: list[tuple[int, Callable]] = []
        pending: list[Any] = []  # consecutive skipped fields, merged into one pattern
        for f in top["fields"]:
            kind = {
                "objectId": _OBJECT_ID,
                "candid": _CANDID,
                "candidate": _CANDIDATE,
                "prv_candidates": _HISTORY,
            }.get(f["name"], _SKIP)
            if kind == _SKIP:
                pending.append(f["type"])
                continue
            if pending:
                steps.append((_SKIP, c.fields_skipper(pending)))
                pending = []
            if kind == _CANDIDATE:
                steps.append((kind, _candidate_reader(c, f["type"])))
            elif kind == _HISTORY:
                steps.append((kind, _history_reader(c, f["type"])))
            else:
                steps.append((kind, c.reader(f["type"])))
        if pending:
            steps.append((_SKIP, c.fields_skipper(pending)))
        self.steps = tuple((k, s) for k, s in steps if s is not _skip_nothing)

    def scan(self, buf: bytes, pos: int, end: int) -> tuple[int, Any, Any, Any, bool]:
        object_id = candid = jd = None
        earliest = _INF
        for kind, step in self.steps:
            if kind == _SKIP:
                pos = step(buf, pos, end)
            elif kind == _HISTORY:
                pos, earliest = step(buf, pos, end)
            elif kind == _CANDIDATE:
                pos, jd = step(buf, pos, end)
            elif kind == _OBJECT_ID:
                object_id, pos = step(buf, pos, end)
            else:
                candid, pos = step(buf, pos, end)
        if object_id is None or candid is None:
            raise _Bail  # decode_alerts' check fails: let the exact path raise its error
        return pos, object_id, candid, jd, earliest < jd


_PLANS: dict[bytes, _Plan | None] = {}


def _compiled(cache: dict[bytes, Any], schema_bytes: bytes, compile: Callable[[], Any]) -> Any:
    """``compile()`` for these exact schema bytes, once per process (None when it raises).

    ``compile`` raises :class:`_Unsupported`, or anything a shape the compiler trips over
    raises (RecursionError, ...): such odd but valid schemas are decoded exactly and slowly.
    """
    try:
        return cache[schema_bytes]
    except KeyError:
        pass
    try:
        plan = compile()
    except Exception:
        plan = None
    if len(cache) >= _MAX_PLANS:
        cache.clear()
    cache[schema_bytes] = plan
    return plan


def _plan_for(schema_bytes: bytes, writer: _Writer) -> _Plan | None:
    """The plan for these exact schema bytes (None: not plannable), compiled once per process."""
    return _compiled(_PLANS, schema_bytes, lambda: _Plan(writer.parsed))


#: The last header parsed: ``(magic + metadata bytes, metadata)``.
_LAST_HEADER: list[tuple[bytes, dict[str, bytes]]] = []


def _header(r: _Reader, data: bytes) -> tuple[dict[str, bytes], bytes, bytes]:
    """``_read_header``, short-cut for a file that starts with the last header's bytes.

    Single-alert files of one producer repeat the same metadata map byte for byte; comparing
    it (one ``memcmp``) replaces a varint-by-varint parse, which would read those very bytes
    and reach the same result. Only the sync marker after it differs from file to file.
    """
    if _LAST_HEADER:
        prefix, meta = _LAST_HEADER[0]
        end = len(prefix) + SYNC_SIZE
        if len(data) >= end and data.startswith(prefix):
            r.pos = end
            return meta, prefix[len(AVRO_MAGIC) :], data[len(prefix) : end]
    meta, meta_bytes, sync = _read_header(r)
    _LAST_HEADER[:] = [(AVRO_MAGIC + meta_bytes, meta)]
    return meta, meta_bytes, sync


#: The last schema of each length: ``(schema bytes, writer, plan)``; a handful suffice.
_MAX_RECENT = 8
_RECENT: dict[int, tuple[bytes, _Writer, _Plan | None]] = {}


def _writer_and_plan(schema_bytes: bytes, meta_bytes: bytes) -> tuple[_Writer, _Plan | None]:
    """``_writer_for`` and :func:`_plan_for`, short-cut for a schema seen before.

    Every single-alert file brings a fresh copy of its ~27 kB schema; hashing it for the dict
    lookups costs ~15 us, comparing it with the last schema of that length ~1 us.
    """
    hit = _RECENT.get(len(schema_bytes))
    if hit is not None and hit[0] == schema_bytes:
        return hit[1], hit[2]
    writer = _writer_for(schema_bytes, meta_bytes)  # raises bad_schema as decode_alerts does
    plan = None if writer.survey is not ZTF else _plan_for(schema_bytes, writer)
    if len(_RECENT) >= _MAX_RECENT:
        _RECENT.clear()
    _RECENT[len(schema_bytes)] = (schema_bytes, writer, plan)
    return writer, plan


# --- containers -----------------------------------------------------------------------------------
#: Earlier detection in a ZTF record's history (the fast paths read ZTF only).
_earlier = ZTF.earlier_detection


def _fallback(data: bytes, source: str, path: str, out: list[Scanned]) -> None:
    alerts, error = decode_alerts(data, source, path)
    _COUNTS["fallback"] += len(alerts)
    for a in alerts:
        out.append(Scanned(a.object_id, a.candid, a.jd, a.earlier_detection, source, path))
    if error is not None:
        raise error


def _scan_into(data: bytes, source: str, path: str, out: list[Scanned]) -> None:
    # The framing below follows transforms.alerts.iter_alerts step by step, with its messages.
    if not data.startswith(AVRO_MAGIC):  # wire-format messages, Parquet: no plan, full decode
        _fallback(data, source, path, out)
        return
    r = _Reader(memoryview(data))
    meta, meta_bytes, sync = _header(r, data)
    schema_bytes = meta.get("avro.schema")
    if schema_bytes is None:
        raise AlertDecodeError("bad_schema", "container metadata has no avro.schema")
    codec = meta.get("avro.codec", b"null").decode("ascii", "replace") or "null"
    writer, plan = _writer_and_plan(schema_bytes, meta_bytes)
    if writer.survey is None:
        raise writer.unknown_survey()
    if plan is None:
        _fallback(data, source, path, out)
        return
    scan = plan.scan
    append = out.append
    counts = _COUNTS
    index = 0
    block_no = 0
    fast = 0
    try:
        while r.pos < len(r.buf):
            count = r.long()
            size = r.long()
            if count < 0 or size < 0:
                raise AlertDecodeError("bad_container", f"block {block_no} has negative count/size")
            start = r.pos
            payload = r.take(size, f"block {block_no}")
            marker = bytes(r.take(SYNC_SIZE, "block sync marker"))
            if marker != sync:
                raise AlertDecodeError("sync_mismatch", f"block {block_no} sync marker differs")
            if codec == "null":
                buf, pos, end = data, start, start + size  # no copy: offsets into the file
            else:
                buf = bytes(_decompress(codec, payload))
                pos, end = 0, len(buf)
            begin = pos
            exact_io = None
            for _ in range(count):
                try:
                    got = scan(buf, pos, end)
                except Exception:  # _Bail, or anything unforeseen: fastavro has the last word
                    got = None
                if got is None:
                    if exact_io is None:
                        exact_io = io.BytesIO(buf[begin:end])
                    got = _exact(exact_io, pos - begin, writer, index)
                    got = (got[0] + begin, *got[1:])
                else:
                    fast += 1
                pos, object_id, candid, jd, earlier = got
                append(Scanned(object_id, candid, jd, earlier, source, path))
                index += 1
            if pos != end:
                raise AlertDecodeError(
                    "bad_container", f"{end - pos} stray bytes after record {index - 1}"
                )
            block_no += 1
    finally:
        counts["fast"] += fast


def _exact(bio: io.BytesIO, offset: int, writer: _Writer, index: int) -> tuple:
    """Decode one record as ``iter_alerts`` does; returns (end offset, object_id, candid, jd,
    earlier) or raises its error."""
    _COUNTS["exact"] += 1
    bio.seek(offset)
    try:
        record = fastavro.schemaless_reader(bio, writer.parsed, None)
    except Exception as e:  # the very message decode_alerts gives
        raise AlertDecodeError(
            "bad_record", f"record {index} does not decode: {type(e).__name__}: {e}"
        ) from e
    _check_record(record, index)
    return (
        bio.tell(),
        record["objectId"],
        record["candid"],
        record["candidate"]["jd"],
        _earlier(record),
    )


def scan_alerts(
    data: bytes, source: str, path: str = ""
) -> tuple[list[Scanned], AlertDecodeError | None]:
    """Scan a container for first-detection selection, keeping what scans and the first error.

    Parameters
    ----------
    data
        Avro container bytes (one or many ZTF alerts, any codec ``decode_alerts`` reads).
    source
        Label for where they came from, kept on each :class:`Scanned`.
    path
        The file they were read from, kept on each :class:`Scanned`.

    Returns
    -------
    scanned, error
        One :class:`Scanned` per record before the first problem, and the problem (None when the
        container is clean): the same number of records and the same
        :class:`~transforms.alerts.AlertDecodeError` (code and text) as
        :func:`transforms.alerts.decode_alerts` returns for these bytes. Like ``decode_alerts``
        it raises nothing else on junk input.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    out: list[Scanned] = []
    try:
        _scan_into(data, source, path, out)
    except AlertDecodeError as e:
        return out, e
    return out, None


# --- slim decoding (the second pass) --------------------------------------------------------------
class _SlimPlan:
    """One writer schema, compiled to cut the history fields out of a record's bytes.

    The winners of selection are decoded again without ``prv_candidates`` and ``fp_hists``
    (:meth:`transforms.alerts.Alert.slim` drops them anyway): the bytes of those fields are
    stepped over with the first pass's skippers and cut out, and what is left is exactly the
    encoding of the record under a schema whose history fields are ``null`` (a null takes no
    bytes), which fastavro decodes as usual.
    """

    __slots__ = ("parsed", "steps")

    def __init__(self, schema_bytes: bytes, parsed: Any) -> None:
        c = _Compiler(parsed)
        top = c.resolve(parsed)
        if not (isinstance(top, dict) and top["type"] in ("record", "error")):
            raise _Unsupported("top level is not a record")
        steps: list[tuple[bool, Skip]] = []
        pending: list[Any] = []
        for f in top["fields"]:
            if f["name"] not in _HISTORY_FIELDS:
                pending.append(f["type"])
                continue
            if pending:
                steps.append((False, c.fields_skipper(pending)))
                pending = []
            steps.append((True, c.skipper(f["type"])))
        if pending:
            steps.append((False, c.fields_skipper(pending)))
        if not any(history for history, _ in steps):
            raise _Unsupported("no history fields to cut")
        schema = json.loads(schema_bytes)
        for f in schema["fields"]:
            if f["name"] in _HISTORY_FIELDS:
                f["type"] = "null"
        # Raises when a named type defined inside a history field is used elsewhere: no plan.
        self.parsed = fastavro.parse_schema(schema)
        self.steps = tuple(steps)

    def cut(self, buf: bytes, pos: int, end: int) -> tuple[int, bytes]:
        """The record at ``pos``: (its end, its bytes without the history fields)."""
        parts = []
        keep = pos
        for history, skip in self.steps:
            start = pos
            pos = skip(buf, pos, end)
            if history:
                parts.append(buf[keep:start])
                keep = pos
        parts.append(buf[keep:pos])
        return pos, b"".join(parts)


_SLIM_PLANS: dict[bytes, _SlimPlan | None] = {}


def _slim_plan_for(schema_bytes: bytes, writer: _Writer) -> _SlimPlan | None:
    """The slim plan for these exact schema bytes (None: decode in full), once per process."""
    return _compiled(_SLIM_PLANS, schema_bytes, lambda: _SlimPlan(schema_bytes, writer.parsed))


def _slim_fast(data: bytes, source: str, path: str) -> list[Alert] | None:
    """Every record of an uncompressed container, slim; None at the first thing it does not
    vouch for (the caller then decodes the container in full, with its errors)."""
    r = _Reader(memoryview(data))
    meta, meta_bytes, sync = _header(r, data)
    schema_bytes = meta.get("avro.schema")
    if schema_bytes is None or meta.get("avro.codec", b"null") not in (b"null", b""):
        return None
    writer, _ = _writer_and_plan(schema_bytes, meta_bytes)
    plan = None if writer.survey is not ZTF else _slim_plan_for(schema_bytes, writer)
    if plan is None:
        return None
    out: list[Alert] = []
    while r.pos < len(r.buf):
        count = r.long()
        size = r.long()
        if count < 0 or size < 0:
            return None
        pos = r.pos
        end = pos + size
        r.take(size, "block")
        if bytes(r.take(SYNC_SIZE, "block sync marker")) != sync:
            return None
        for _ in range(count):
            pos, cut = plan.cut(data, pos, end)
            bio = io.BytesIO(cut)
            record = fastavro.schemaless_reader(bio, plan.parsed, None)
            if bio.tell() != len(cut):
                return None
            _check_record(record, len(out))
            slim = {k: v for k, v in record.items() if k not in _HISTORY_FIELDS}
            out.append(Alert(record=slim, source=source, raw=b"", path=path))
        if pos != end:
            return None
    return out


def slim_alerts(data: bytes, source: str, path: str = "") -> Iterator[Alert]:
    """``alert.slim()`` of every alert :func:`transforms.alerts.iter_alerts` decodes, without
    decoding their histories.

    Parameters
    ----------
    data, source, path
        As for :func:`~transforms.alerts.iter_alerts`.

    Yields
    ------
    Alert
        Slim alerts (no ``prv_candidates``/``fp_hists``, ``raw`` empty), equal to the full
        decode's ``.slim()``.

    Raises
    ------
    AlertDecodeError
        As ``iter_alerts``, after the same records: anything unusual in the container (a codec,
        junk, truncation, a schema the planner does not compile) sends the whole container to
        ``iter_alerts``.
    """
    try:
        fast = _slim_fast(data, source, path)
    except Exception:  # _Bail, AlertDecodeError, fastavro's errors: the full decode decides
        fast = None
    if fast is None:
        for alert in iter_alerts(data, source, path):
            yield alert.slim()
        return
    yield from fast
