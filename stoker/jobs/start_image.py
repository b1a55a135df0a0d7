"""image's starting image (image-to-image) and mask (inpainting): read and checked at
submission, used on the worker.

With ``path`` set, an image job makes its images from that picture instead of from
noise: the pipeline noises it by ``strength`` (0 keeps it, 1 keeps nothing but its
colours' layout) and denoises it towards the prompt. With a ``mask`` too, only the
parts the mask marks are redrawn (inpainting). The same loaded text-to-image pipeline
does both: diffusers' ``AutoPipelineForImage2Image`` / ``AutoPipelineForInpainting``
``.from_pipe`` build the pipeline of the same family around the same components, so
no second copy of the weights is loaded and the model manager's footprint stays true.

Both pictures are read whole at submission, so a file that is not an image, or is
truncated, is refused then and there, naming the file. Each is stored once by
content, as a recording to transcribe is, and its digest is part of each image's
identity.

A mask marks what to redraw as OpenAI's do, by transparency (fully transparent parts
are redrawn), when it has transparent pixels; otherwise as diffusers' do, by
brightness (white is redrawn, black kept).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stoker.errors import InvalidInput, MissingDependency
from stoker.storage.keys import content_input_key, file_sha256

#: diffusers' own defaults: how far an image moves from its starting image, and how
#: far the masked parts move when inpainting (all the way: they are redrawn).
DEFAULT_STRENGTH, DEFAULT_INPAINT_STRENGTH = 0.8, 1.0
#: The EXIF tag that says how a stored picture is turned to be seen, and its values
#: that turn it a quarter (a phone photo taken upright is stored sideways).
EXIF_ORIENTATION, QUARTER_TURNS = 0x0112, frozenset({5, 6, 7, 8})
#: What a folder (or s3:// prefix) of starting images is searched for.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


@dataclass(frozen=True)
class Picture:
    """A picture a job reads, as submitted."""

    path: Path  # on the submitting machine, uploaded from there
    name: str  # the file's name, for metadata and errors
    sha256: str
    key: str  # its content-addressed input key (storage/keys.py)
    width: int  # pixels, seen upright
    height: int

    def record(self) -> dict[str, str]:
        """What the job's params keep of it (the workers read it by ``key``)."""
        return {"name": self.name, "sha256": self.sha256, "key": self.key}


@dataclass(frozen=True)
class StartImage:
    """A job's starting image, how far its images move from it, and what to redraw."""

    image: Picture
    strength: float
    mask: Picture | None = None  # None: the whole image is redrawn

    def pictures(self) -> list[Picture]:
        return [self.image] if self.mask is None else [self.image, self.mask]


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:
        raise MissingDependency("pillow", "image", "Reading a starting image") from exc
    return Image


def read_start(
    path: str | None, strength: float | None, steps: int, mask: str | None = None
) -> StartImage | None:
    """The starting image (and mask) of an image request, None without one, checked;
    InvalidInput naming what is wrong: a file that is not an image, a strength or a
    mask without an image, a mask of another size or that marks nothing, or a strength
    that leaves none of ``steps`` to run."""
    if path is None:
        for field, value in (("strength", strength), ("mask", mask)):
            if value is not None:
                raise InvalidInput(
                    f"{field} applies to a starting image; give one with --image "
                    f"(path), or leave {field} out.",
                    field,
                )
        return None
    if strength is None:
        strength = DEFAULT_STRENGTH if mask is None else DEFAULT_INPAINT_STRENGTH
    check_steps(steps, strength)
    image = read_picture(Path(path), "starting image", "path")
    if mask is None:
        return StartImage(image, strength)
    marks = read_picture(Path(mask), "mask", "mask")
    if (marks.width, marks.height) != (image.width, image.height):
        raise InvalidInput(
            f"the mask {marks.name} is {marks.width}×{marks.height} and the starting image "
            f"{image.name} {image.width}×{image.height}; give a mask of the image's size.",
            "mask",
        )
    _check_marks(marks)
    return StartImage(image, strength, marks)


def read_picture(path: Path, what: str, field: str) -> Picture:
    """``path`` checked as an image (decoded whole); InvalidInput naming it otherwise."""
    name = path.name
    if not path.is_file():
        raise InvalidInput(f"the {what} {name} does not exist or is not a file.", field)
    image_module = _pil()
    try:
        with image_module.open(path) as image:
            image.load()  # decodes every pixel: a truncated file fails here, not on a worker
            width, height = image.size
            if image.getexif().get(EXIF_ORIENTATION) in QUARTER_TURNS:
                width, height = height, width  # seen upright, as the worker uses it
            fmt = (image.format or "bin").lower()
    except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, ...)
        raise InvalidInput(
            f"the {what} {name} could not be read as an image ({exc}); "
            f"give a PNG, JPEG or WebP file.",
            field,
        ) from exc
    digest = file_sha256(path)
    return Picture(path, name, digest, content_input_key(digest, fmt), width, height)


def _check_marks(mask: Picture) -> None:
    """InvalidInput when ``mask`` marks nothing to redraw (the job would redraw nothing)."""
    marks = load_mask(mask.path, mask.width, mask.height)
    if marks.getextrema()[1] == 0:
        raise InvalidInput(
            f"the mask {mask.name} marks nothing to redraw: its fully transparent parts "
            f"are redrawn (or, in a mask without transparency, its white parts); black "
            f"or opaque parts are kept.",
            "mask",
        )


def picture_names(relatives: list[str]) -> list[str]:
    """A name in the batch (jobs/base.NAME_PATTERN) for each picture of a folder: its
    path under the folder without the suffix, ``/`` as ``_`` and other characters a name
    cannot hold as ``-``: ``shoots/cat 1.jpg`` → ``shoots_cat-1``. A name that is taken
    already (``a.png`` beside ``a.jpg``) gets its picture's position: ``a-2``."""
    names: list[str] = []
    taken: set[str] = set()
    for index, relative in enumerate(relatives):
        folder, _, file = relative.rpartition("/")
        stem = file.rsplit(".", 1)[0] if "." in file else file
        joined = f"{folder}_{stem}" if folder else stem
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", joined.replace("/", "_")).strip("-._")[:90]
        name, n = base or "picture", index + 1
        while name in taken:
            name, n = f"{base or 'picture'}-{n}", n + 1
        names.append(name)
        taken.add(name)
    return names


def check_steps(steps: int, strength: float) -> None:
    """InvalidInput when ``strength`` leaves no denoising step of ``steps``: diffusers
    runs ``int(steps × strength)`` of them from a starting image."""
    if int(steps * strength) >= 1:
        return
    needed = math.ceil(1 / strength)
    while int(needed * strength) < 1:  # float rounding: 1/0.3 → 4 is enough, 3 is not
        needed += 1
    raise InvalidInput(
        f"with strength {strength} and {steps} steps no denoising step runs "
        f"(a starting image runs steps × strength of them); give --steps {needed} or more, "
        f"or a higher --strength.",
        "steps",
    )


def load_start_image(path: Path, width: int | None = None, height: int | None = None) -> Any:
    """The starting image as the RGB PIL image of ``width``×``height`` a pipeline takes
    (without them, at its own size, upright)."""
    image_module = _pil()
    with image_module.open(path) as image:
        upright = _upright(image).convert("RGBA")
    # Transparent parts are seen on white, as a viewer shows them; a plain conversion
    # would keep whatever colour they hold, often black.
    rgb = image_module.new("RGB", upright.size, (255, 255, 255))
    rgb.paste(upright, mask=upright.getchannel("A"))
    if width and height and rgb.size != (width, height):
        rgb = rgb.resize((width, height), image_module.Resampling.LANCZOS)
    return rgb


def load_mask(path: Path, width: int, height: int) -> Any:
    """The mask as the greyscale PIL image of ``width``×``height`` diffusers takes:
    white where to redraw. A mask with transparent pixels marks them (OpenAI's way);
    any other is read by brightness (diffusers' way)."""
    image_module = _pil()
    with image_module.open(path) as image:
        upright = _upright(image)
        alpha = upright.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            marks = alpha.point(lambda a: 255 if a == 0 else 0)
        else:
            marks = upright.convert("L")
    if marks.size != (width, height):
        marks = marks.resize((width, height), image_module.Resampling.NEAREST)
    return marks


def _upright(image: Any) -> Any:
    """``image`` as it is meant to be seen: a phone photo stored sideways with an EXIF
    Orientation tag is turned as every viewer turns it (PIL does not by itself)."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(image)


def task_pipeline(pipe: Any, model: str, *, inpaint: bool) -> Any:
    """The image-to-image (or, with ``inpaint``, inpainting) pipeline of loaded
    text-to-image ``pipe``, sharing its components (no weights are copied);
    InvalidInput when its family has none."""
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    auto = AutoPipelineForInpainting if inpaint else AutoPipelineForImage2Image
    try:
        return auto.from_pipe(pipe)
    except ValueError as exc:  # "AutoPipeline can't find a pipeline linked to X"
        task, field, leave = (
            ("inpainting", "mask", "--mask") if inpaint else ("image-to-image", "path", "--image")
        )
        raise InvalidInput(
            f"model {model!r} ({type(pipe).__name__}) has no {task} pipeline in diffusers; "
            f"leave out {leave}, or use a Stable Diffusion, SDXL or Flux model.",
            field,
        ) from exc
