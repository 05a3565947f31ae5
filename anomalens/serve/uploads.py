"""Turning a request body into images: size limits, multipart in memory, header checks, decoding.

Nothing is written to disk: the body is read into memory (at most `max_upload_bytes`, checked
against Content-Length first and again while reading) and multipart is parsed from those bytes,
so no upload is ever spooled to a temporary file. Each image's format and pixel count are read
from its header before any pixel is decoded, so a decompression bomb is refused unopened.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..errors import ImageLoadError
from ..images import ImageReading, LoadedImage, load_image_bytes
from .errors import ServeError

# Pillow format name -> MIME type of the formats the service takes.
ACCEPTED_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "BMP": "image/bmp", "TIFF": "image/tiff"}
# Content types accepted for a raw (non-multipart) body and for a multipart file part.
IMAGE_CONTENT_TYPES = {
    "image/png",
    "image/jpeg",
    "image/jpg",
    "image/pjpeg",
    "image/bmp",
    "image/x-bmp",
    "image/x-ms-bmp",
    "image/tiff",
    "image/tif",
    "application/octet-stream",
}
RAW_NAME = "upload"  # the file name of a raw body without an X-Filename header


@dataclass
class Upload:
    name: str
    data: bytes


def check_content_length(header: str | None, limit: int) -> None:
    if header is None:
        return
    try:
        length = int(header)
    except ValueError as err:
        raise ServeError(400, "bad_request", f"Content-Length {header!r} is not a number") from err
    if length > limit:
        raise _too_large(length, limit)


def _too_large(size: int, limit: int) -> ServeError:
    return ServeError(413, "upload_too_large", f"request body is {size} bytes or more; the limit is {limit} bytes")


async def read_body(request, limit: int) -> bytes:
    """The whole body, refusing it as soon as it exceeds `limit` bytes."""
    check_content_length(request.headers.get("content-length"), limit)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _too_large(total, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(header: str | bytes | None) -> tuple[str, dict[bytes, bytes]]:
    value, params = parse_options_header(header)
    return value.decode("latin-1").strip().lower(), params


def parse_uploads(body: bytes, content_type: str | None, filename: str | None = None) -> list[Upload]:
    """The uploaded files of a request: every file part of a multipart form, or the raw body."""
    media, params = _media_type(content_type)
    if not media:
        raise ServeError(
            415, "unsupported_content_type", "no Content-Type: send multipart/form-data or the image bytes as image/*"
        )
    if media == "multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary:
            raise ServeError(400, "bad_multipart", "multipart/form-data without a boundary parameter")
        uploads = _parse_multipart(body, boundary)
        if not uploads:
            raise ServeError(400, "no_file", "the multipart form holds no file part (send the image as 'file')")
        return uploads
    if media not in IMAGE_CONTENT_TYPES:
        raise ServeError(
            415,
            "unsupported_content_type",
            f"Content-Type {media} is not an image type: send PNG, JPEG, BMP or TIFF bytes "
            "(image/png, image/jpeg, image/bmp, image/tiff, application/octet-stream) or multipart/form-data",
        )
    return [Upload(name=filename or RAW_NAME, data=body)]


def _parse_multipart(body: bytes, boundary: bytes) -> list[Upload]:
    parts: list[dict] = []
    state: dict = {}

    def part_begin() -> None:
        state.update(headers={}, data=[], field=b"", value=b"")

    def header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def header_end() -> None:
        state["headers"][state["field"].decode("latin-1").lower()] = state["value"].decode("latin-1")
        state["field"], state["value"] = b"", b""

    def part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def part_end() -> None:
        parts.append({"headers": state["headers"], "data": b"".join(state["data"])})

    callbacks = {
        "on_part_begin": part_begin,
        "on_header_field": header_field,
        "on_header_value": header_value,
        "on_header_end": header_end,
        "on_part_data": part_data,
        "on_part_end": part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except MultipartParseError as err:
        raise ServeError(400, "bad_multipart", f"malformed multipart body: {err}") from err
    uploads = []
    for part in parts:
        _, disposition = _media_type(part["headers"].get("content-disposition"))
        field = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        if filename is None:
            continue  # an ordinary form field, not a file
        name = filename.decode("utf-8", "replace") or field or RAW_NAME
        media, _ = _media_type(part["headers"].get("content-type"))
        if media and media not in IMAGE_CONTENT_TYPES:
            raise ServeError(
                415,
                "unsupported_content_type",
                f"part {field!r} has Content-Type {media}, not an image type (PNG, JPEG, BMP, TIFF)",
                file=name,
            )
        uploads.append(Upload(name=name, data=part["data"]))
    return uploads


def decode_upload(upload: Upload, max_pixels: int, bit_depth: str | int = "auto") -> LoadedImage:
    """Check format and pixel count from the header, then decode as `load_image` reads a file
    (`bit_depth`: the model's, so uploads are read as its references were)."""
    name = upload.name
    if not upload.data:
        raise ServeError(400, "empty_file", "the upload is empty (0 bytes)", file=name)
    try:
        with Image.open(io.BytesIO(upload.data)) as img:  # reads the header only
            fmt, (width, height) = img.format, img.size
    except Image.DecompressionBombError as err:
        raise ServeError(413, "too_many_pixels", f"decompression bomb refused: {err}", file=name) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ServeError(415, "not_an_image", "not an image: not a PNG, JPEG, BMP or TIFF file", file=name) from err
    if fmt not in ACCEPTED_FORMATS:
        raise ServeError(
            415, "unsupported_format", f"{fmt} images are not accepted; send PNG, JPEG, BMP or TIFF", file=name
        )
    if width * height > max_pixels:
        raise ServeError(
            413,
            "too_many_pixels",
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
            "(a decompression bomb or an image too large for this service)",
            file=name,
        )
    try:
        return load_image_bytes(upload.data, name, ImageReading(bit_depth, max_pixels))
    except ImageLoadError as err:
        kind = "truncated_image" if "truncated" in err.reason else "corrupt_image"
        raise ServeError(422, kind, f"cannot decode the {fmt} image: {err.reason}", file=name) from err
