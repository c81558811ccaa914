"""The raw material of the emoji benchmark: CLDR English annotations and the Noto Color Emoji font.

Both come from Debian packages (``unicode-cldr-core`` and ``fonts-noto-color-emoji``); this module finds them,
reads the annotations, and renders one emoji sequence to a square RGB image.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from dcd_itr.errors import DcdError

DEBIAN_PACKAGES = ("fonts-noto-color-emoji", "unicode-cldr-core")
APT_LINE = "sudo apt-get install -y " + " ".join(DEBIAN_PACKAGES)
DEFAULT_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
DEFAULT_CLDR_DIR = Path("/usr/share/unicode/cldr/common")
ANNOTATION_FILES = ("annotations/en.xml", "annotationsDerived/en.xml")

FONT_SIZE = 109  # Noto Color Emoji is a bitmap font with one strike: 109 px selects it (136 px glyphs)
CANVAS_SIZE = 136  # the font's native bitmap width: images are stored at this size, encoders resize
SKIN_TONES = frozenset(chr(c) for c in range(0x1F3FB, 0x1F400))  # Fitzpatrick modifiers U+1F3FB..U+1F3FF
VARIATION_SELECTOR = "\ufe0f"


@dataclass(frozen=True)
class Annotation:
    sequence: str  # the emoji's code points, as CLDR writes them (U+FE0F removed)
    name: str  # the CLDR "tts" short name, e.g. "grinning face"
    keywords: tuple[str, ...]  # the CLDR keyword list, e.g. ("face", "grin", "grinning face")


def missing_packages_error(what: str) -> DcdError:
    return DcdError(
        f"{what} not found. The emoji benchmark needs Debian packages; install them with:\n  {APT_LINE}"
    )


def find_font(font_path: str | Path | None = None) -> Path:
    path = Path(font_path) if font_path else DEFAULT_FONT
    if not path.is_file():
        raise missing_packages_error(f"Noto Color Emoji font ({path})")
    return path


def find_cldr_dir(cldr_dir: str | Path | None = None) -> Path:
    path = Path(cldr_dir) if cldr_dir else DEFAULT_CLDR_DIR
    for name in ANNOTATION_FILES:
        if not (path / name).is_file():
            raise missing_packages_error(f"CLDR annotations ({path / name})")
    return path


def debian_package_version(package: str) -> str:
    """The installed version of a Debian package, or "unknown" off Debian."""
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "unknown"


def read_annotations(cldr_dir: Path) -> dict[str, Annotation]:
    """Merge the base and derived English annotation files: sequence -> name and keywords."""
    names: dict[str, str] = {}
    keywords: dict[str, list[str]] = {}
    for relative in ANNOTATION_FILES:
        path = cldr_dir / relative
        try:
            root = ElementTree.parse(path).getroot()
        except ElementTree.ParseError as error:
            raise DcdError(f"{path}: malformed CLDR XML ({error})") from None
        for element in root.iter("annotation"):
            sequence, text = element.get("cp"), (element.text or "").strip()
            if not sequence or not text:
                continue
            if element.get("type") == "tts":
                names.setdefault(sequence, text)
            else:
                merged = keywords.setdefault(sequence, [])
                merged.extend(word.strip() for word in text.split("|") if word.strip() not in merged)
    return {
        sequence: Annotation(sequence, name, tuple(word for word in keywords.get(sequence, []) if word))
        for sequence, name in names.items()
    }


class EmojiRenderer:
    """Renders an emoji sequence as one glyph, or reports that it cannot (blank, or several glyphs)."""

    def __init__(self, font_path: Path) -> None:
        self.font = ImageFont.truetype(str(font_path), FONT_SIZE, layout_engine=ImageFont.Layout.RAQM)
        self.glyph_advance = self.font.getlength("\U0001f600")  # one glyph's advance (grinning face)

    def _single_glyph(self, text: str) -> bool:
        return self.font.getlength(text) < 1.5 * self.glyph_advance

    def render(self, sequence: str) -> Image.Image | None:
        """A CANVAS_SIZE square RGB image of ``sequence`` on white, or None if it is blank or not one glyph."""
        candidates = [sequence, sequence[0] + VARIATION_SELECTOR + sequence[1:]]
        text = next((candidate for candidate in candidates if self._single_glyph(candidate)), None)
        if text is None:
            return None
        layer = Image.new("RGBA", (2 * CANVAS_SIZE, 2 * CANVAS_SIZE), (255, 255, 255, 0))
        ImageDraw.Draw(layer).text(
            (CANVAS_SIZE // 2, CANVAS_SIZE // 2), text, font=self.font, embedded_color=True
        )
        content_box = layer.getchannel("A").getbbox()
        if content_box is None:
            return None
        content = layer.crop(content_box)
        if max(content.size) > CANVAS_SIZE:
            content.thumbnail((CANVAS_SIZE, CANVAS_SIZE), Image.Resampling.LANCZOS)
        canvas = Image.new("RGBA", (CANVAS_SIZE, CANVAS_SIZE), (255, 255, 255, 255))
        offset = ((CANVAS_SIZE - content.width) // 2, (CANVAS_SIZE - content.height) // 2)
        canvas.alpha_composite(content, offset)
        return canvas.convert("RGB")
