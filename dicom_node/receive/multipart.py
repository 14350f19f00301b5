"""A streaming reader of a ``multipart/related`` body (RFC 2387 on RFC 2046 5.1), for STOW-RS.

STOW-RS (PS3.18 10.5) sends instances as the parts of one ``multipart/related;
type="application/dicom"`` body. :class:`MultipartReader` is fed the body in chunks as it
arrives and returns events: ``PartStart(headers)``, ``PartData(bytes)``, ``PartEnd()``; a part's
content is never held whole (only up to one delimiter's length is kept back). :meth:`close`
says whether the body ended with the close delimiter: a body cut off midway leaves its last
part unfinished (:class:`MultipartError`), and the caller discards that part.

:func:`boundary_of` reads the boundary from the request's ``Content-Type``, or raises
:class:`UnsupportedMediaType` (not ``multipart/related``, or a ``type`` other than
``application/dicom``; HTTP 415) or :class:`MultipartError` (no boundary; HTTP 400).
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message

#: a part's header block longer than this is malformed (PS3.18 parts carry one or two headers)
MAX_HEADER_BYTES = 16 * 1024
DICOM = "application/dicom"
MAX_BOUNDARY = 200


class MultipartError(ValueError):
    """The body is not a well-formed multipart body (HTTP 400 when no part was complete)."""


class UnsupportedMediaType(ValueError):
    """Not ``multipart/related; type="application/dicom"`` (HTTP 415)."""


@dataclass(frozen=True)
class PartStart:
    headers: dict[str, str]            # lower-case names

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", DICOM).split(";")[0].strip().lower()


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/related; type="application/dicom"; boundary=...``
    Content-Type (the ``type`` parameter may be absent: each part then says its own)."""
    msg = Message()
    msg["content-type"] = content_type or ""
    if msg.get_content_type() != "multipart/related":
        raise UnsupportedMediaType(f"Content-Type {msg.get_content_type()!r} is not multipart/related")
    kind = str(msg.get_param("type") or DICOM).lower()
    if kind != DICOM:
        raise UnsupportedMediaType(f"multipart/related of type {kind!r}: only {DICOM} is accepted")
    boundary = msg.get_param("boundary")
    # RFC 2046 allows 70 characters; some senders use more (Orthanc: two UUIDs, 73)
    if not isinstance(boundary, str) or not 0 < len(boundary) <= MAX_BOUNDARY:
        raise MultipartError("multipart/related without a valid boundary parameter")
    return boundary.encode("latin-1")


class MultipartReader:
    """Incremental multipart parser: :meth:`feed` chunks, get events; :meth:`close` at the end."""

    def __init__(self, boundary: bytes):
        self._delim = b"\r\n--" + boundary
        self._buf = bytearray(b"\r\n")     # the first delimiter has no CRLF before it
        self._state = "preamble"            # -> after_delim -> headers -> body -> ... -> done
        self.parts_done = 0

    @property
    def in_part(self) -> bool:
        return self._state == "body"

    def feed(self, data: bytes) -> list[Event]:
        """The events the body so far completes (raises MultipartError on malformed input)."""
        self._buf += data
        out: list[Event] = []
        while self._step(out):
            pass
        return out

    def close(self) -> None:
        """The body has ended: MultipartError unless it ended with the close delimiter."""
        if self._state != "done":
            if self._state in ("body", "headers"):
                raise MultipartError("multipart body truncated inside a part (no close delimiter)")
            raise MultipartError("no part found: the boundary of the Content-Type header never appears in "
                                 "the body (wrong boundary), or the body ends before its first part")

    def _step(self, out: list[Event]) -> bool:
        """Advance one state if the buffer allows; False when more data is needed."""
        state, buf = self._state, self._buf
        if state == "preamble":
            at = buf.find(self._delim)
            if at < 0:
                del buf[:max(0, len(buf) - len(self._delim))]
                return False
            del buf[:at + len(self._delim)]
            self._state = "after_delim"
            return True
        if state == "after_delim":
            return self._after_delimiter(out)
        if state == "headers":
            return self._headers(out)
        if state == "body":
            return self._body(out)
        buf.clear()                           # "done": the epilogue is ignored
        return False

    def _after_delimiter(self, out: list[Event]) -> bool:
        buf = self._buf
        if len(buf) < 2:
            return False
        if buf[:2] == b"--":
            self._state = "done"
            return True
        eol = buf.find(b"\r\n")
        if eol < 0:
            if len(buf) > 256:
                raise MultipartError("no line end after a boundary delimiter")
            return False
        if buf[:eol].strip(b" \t"):           # only transport padding may follow a delimiter
            raise MultipartError("boundary delimiter followed by other text (wrong boundary?)")
        del buf[:eol + 2]
        self._state = "headers"
        return True

    def _headers(self, out: list[Event]) -> bool:
        buf = self._buf
        if buf[:2] == b"\r\n":                # a part without headers
            end, skip = 0, 2
        else:
            end, skip = buf.find(b"\r\n\r\n"), 4
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                raise MultipartError("part header block too long")
            return False
        headers: dict[str, str] = {}
        for line in bytes(buf[:end]).decode("latin-1").split("\r\n") if end else []:
            name, sep, value = line.partition(":")
            if not sep:
                raise MultipartError("malformed part header line")
            headers[name.strip().lower()] = value.strip()
        del buf[:end + skip]
        out.append(PartStart(headers))
        self._state = "body"
        return True

    def _body(self, out: list[Event]) -> bool:
        buf = self._buf
        at = buf.find(self._delim)
        if at < 0:
            keep = len(self._delim) - 1       # a delimiter may straddle this chunk and the next
            if len(buf) > keep:
                out.append(PartData(bytes(buf[:len(buf) - keep])))
                del buf[:len(buf) - keep]
            return False
        if at:
            out.append(PartData(bytes(buf[:at])))
        del buf[:at + len(self._delim)]
        out.append(PartEnd())
        self.parts_done += 1
        self._state = "after_delim"
        return True
