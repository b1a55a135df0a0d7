"""Small pictures for image-to-image and inpainting tests: a starting image, a mask."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def picture(path: Path, size: tuple[int, int], colour: str = "teal", fmt: str = "PNG") -> Path:
    """A plain picture of ``size`` at ``path``."""
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


def half_mask(path: Path, size: tuple[int, int], *, transparent: bool) -> Path:
    """A mask marking the right half to redraw: transparent there on opaque black
    (OpenAI's way), or white there on black (diffusers' way)."""
    width, height = size
    if transparent:
        mask = Image.new("RGBA", size, (0, 0, 0, 255))
        mask.paste((0, 0, 0, 0), (width // 2, 0, width, height))
    else:
        mask = Image.new("L", size, 0)
        mask.paste(255, (width // 2, 0, width, height))
    mask.save(path)
    return path
