"""A zarr v3 array-to-bytes codec that stores each chunk of uint8 frames as an image file.

Image arrays in a demonstration store have shape (T, H, W, C) with one frame per chunk, so a
chunk is (1, H, W, C) and is encoded as one lossless WebP (default) or PNG, or a lossy JPEG.
The codec is registered with zarr under the name ``ditpolicy.image`` when this module is
imported (``import ditpolicy.datasets`` does so).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.registry import register_codec

CODEC_NAME = "ditpolicy.image"
FORMATS = ("webp", "png", "jpeg")


@dataclass(frozen=True)
class ImageCodec(ArrayBytesCodec):
    """Encode a (1, H, W, C) or (1, H, W) uint8 chunk as an image; C in {1, 3, 4}."""

    is_fixed_size = False
    format: str = "webp"
    quality: int = 95  # JPEG quality; ignored by the lossless formats

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"image codec format must be one of {FORMATS}, got {self.format!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "ImageCodec":
        config = data.get("configuration", {}) or {}
        return cls(format=config.get("format", "webp"), quality=int(config.get("quality", 95)))

    def to_dict(self) -> dict:
        return {"name": CODEC_NAME, "configuration": {"format": self.format, "quality": self.quality}}

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        if dtype.to_native_dtype() != np.uint8:
            raise ValueError(f"{CODEC_NAME} needs uint8 frames, got {dtype.to_native_dtype()}")
        chunk_shape = tuple(chunk_grid.chunk_shape)
        if chunk_shape[0] != 1:
            raise ValueError(f"{CODEC_NAME} needs one frame per chunk, got chunk shape {chunk_shape}")

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec) -> Buffer | None:
        frame = np.asarray(chunk_array.as_numpy_array())[0]
        if frame.ndim == 3 and frame.shape[-1] == 1:
            frame = frame[..., 0]
        out = io.BytesIO()
        image = Image.fromarray(np.ascontiguousarray(frame))
        if self.format == "webp":
            image.save(out, format="WEBP", lossless=True, quality=50, method=2)
        elif self.format == "png":
            image.save(out, format="PNG", compress_level=1)
        else:
            image.save(out, format="JPEG", quality=self.quality)
        return chunk_spec.prototype.buffer.from_bytes(out.getvalue())

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec) -> NDBuffer:
        with Image.open(io.BytesIO(chunk_bytes.to_bytes())) as image:
            frame = np.asarray(image)
        shape = tuple(chunk_spec.shape)
        if frame.ndim == 3 and len(shape) == 3:  # grayscale stored as (1, H, W)
            frame = frame[..., 0]
        if frame.ndim == 2 and len(shape) == 4:
            frame = frame[..., None]
        if shape[-1] == 4 and frame.shape[-1] == 3:  # WebP drops an opaque alpha channel
            frame = np.concatenate([frame, np.full(frame.shape[:-1] + (1,), 255, np.uint8)], -1)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(frame.reshape(shape))

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec) -> int:
        raise NotImplementedError("image chunks have no fixed encoded size")


register_codec(CODEC_NAME, ImageCodec)
