"""What the service accepts: upload size, image type, pixel count; bad input -> a 4xx error.

Research and education only; not a medical device.

The upload size is enforced while the body streams in (:class:`BodySizeLimit`): a declared
``Content-Length`` over the limit is refused before any byte is read, and a body that turns out
longer is cut off at the limit, so a 50 MB upload never sits in memory. Images are opened
lazily by Pillow, which reads only the header: the pixel count is checked there, before
decoding (decompression bombs: a few kB of PNG that decode to gigabytes).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from derm_exp.data.images import to_rgb
from derm_exp.errors import UserError

# MIME types of the formats the dataset loader reads (see derm_exp.predict.IMAGE_SUFFIXES).
DEFAULT_CONTENT_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/bmp",
    "image/tiff",
)
# Pillow's format names for those types: the bytes must really be one of them.
PIL_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF"}


class RequestError(UserError):
    """A request the service refuses: an HTTP status and one message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Upload size (bytes), pixel count, accepted content types, per-request timeout (s)."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    content_types: tuple[str, ...] = DEFAULT_CONTENT_TYPES
    request_timeout_s: float = 30.0
    # Multipart overhead (boundaries, the form fields) allowed on top of the file itself.
    form_overhead_bytes: int = field(default=64 * 1024)

    @property
    def max_body_bytes(self) -> int:
        return self.max_upload_bytes + self.form_overhead_bytes

    @classmethod
    def from_config(cls, cfg: Any) -> Limits:
        """From the ``limits`` node of conf/serve.yaml."""
        return cls(
            max_upload_bytes=int(float(cfg.max_upload_mb) * 1024 * 1024),
            max_pixels=int(cfg.max_pixels),
            content_types=tuple(str(t) for t in cfg.content_types),
            request_timeout_s=float(cfg.request_timeout_s),
        )


def too_large(limits: Limits) -> RequestError:
    mb = limits.max_upload_bytes / (1024 * 1024)
    return RequestError(413, f"upload too large: the limit is {mb:g} MB per image")


def check_content_type(content_type: str | None, limits: Limits) -> None:
    """415 unless the part's declared type is one of ``limits.content_types``."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind not in limits.content_types:
        raise RequestError(
            415,
            f"unsupported content type {kind or '(none)'!r}: send an image as "
            f"{', '.join(limits.content_types)} (with curl: -F 'image=@file.jpg;type=image/jpeg')",
        )


def decode_image(data: bytes, limits: Limits) -> Image.Image:
    """The upload as 8-bit RGB (as the dataset loads it); 400 / 413 for what cannot be used."""
    if not data:
        raise RequestError(400, "empty upload: the image file has 0 bytes")
    if len(data) > limits.max_upload_bytes:
        raise too_large(limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            _check_header(image, limits)
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))  # as the dataset loader does
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(None, limits) from None
    except UnidentifiedImageError:
        raise RequestError(400, "not an image: the file cannot be read as JPEG, PNG, ...") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RequestError(
            400, f"the image cannot be decoded (truncated or corrupt?): {detail}"
        ) from None


def _check_header(image: Image.Image, limits: Limits) -> None:
    if image.format not in PIL_FORMATS:
        raise RequestError(415, f"unsupported image format {image.format}: use JPEG, PNG, ...")
    width, height = image.size
    if width < 1 or height < 1:
        raise RequestError(400, f"the image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise _too_many_pixels((width, height), limits)


def _too_many_pixels(size: tuple[int, int] | None, limits: Limits) -> RequestError:
    dims = f" ({size[0]}x{size[1]})" if size else ""
    return RequestError(
        413,
        f"image has too many pixels{dims}: the limit is {limits.max_pixels:,} "
        "(a decompression bomb, or a photo to downscale first)",
    )


class BodySizeLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes while they stream in.

    Hand-written because neither Starlette nor uvicorn limits the body size: Starlette spools a
    multipart upload completely (to disk past 1 MB) before the endpoint could look at it.
    """

    def __init__(self, app: Any, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > self.limits.max_body_bytes
        ):
            await _send_error(send, too_large(self.limits))
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limits.max_body_bytes:
                    from fastapi import HTTPException

                    # FastAPI re-raises an HTTPException from body parsing (any other error
                    # becomes a generic 400), so the app's handler turns it into the JSON error.
                    raise HTTPException(413, too_large(self.limits).message)
            return message

        await self.app(scope, limited_receive, send)


async def _send_error(send: Any, error: RequestError) -> None:
    """A JSON error response sent straight from the middleware (the app never saw the request)."""
    import json

    body = json.dumps({"error": error.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
