"""Image loading: any file Pillow reads becomes an 8-bit RGB image, or a clear error that names the file.

- transparent pixels are composited on white (emoji, logos and PNG icons have alpha);
- EXIF orientation is applied, so a phone photo is upright;
- palette, grey, CMYK and 16-bit images are converted to 8-bit RGB;
- an animated image contributes its first frame;
- Pillow's decompression-bomb limit is enforced as an error (not the warning Pillow emits below twice the limit);
- truncated, zero-byte and unreadable files raise :class:`ImageLoadError` with the path and the reason.

Loading is lazy: nothing is read until :func:`load_rgb` is called for a path.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dcd_itr.errors import ImageLoadError

#: Largest image we accept, in pixels. Pillow's own default (about 89 Mpx); a larger file is refused as a
#: possible decompression bomb.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

WHITE = (255, 255, 255)


def _to_eight_bit_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit grey: scale the actual value range to 0..255 rather than clipping.
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Read ``path`` fully and return an 8-bit RGB image (see the module docstring for the rules)."""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(path, "image file not found")
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise ImageLoadError(
                        path,
                        f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
                    )
                opened.seek(0)  # first frame of an animated image
                opened.load()
                upright = ImageOps.exif_transpose(opened) or opened
                return _to_eight_bit_rgb(upright)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(path, f"refused as a possible decompression bomb: {error}") from None
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image file Pillow can identify") from None
    except OSError as error:  # truncated data, bad headers, I/O errors
        raise ImageLoadError(path, f"cannot read image ({error})") from None
    except (ValueError, SyntaxError) as error:  # some plugins raise these on corrupt headers
        raise ImageLoadError(path, f"corrupt image ({error})") from None
