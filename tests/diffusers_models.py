"""Tiny random diffusers pipelines, built from configs and saved as real pipeline folders.

No weights can be downloaded here, so tests build their own: a Stable Diffusion
text-to-image pipeline (64×64 by default, ~0.1 s for 4 steps on a CPU core), a Shap-E
text-to-3D pipeline and its image-to-3D sibling. Everything is seeded, so the same call
writes the same weights.

Shap-E's mesh decoder ships its marching-cubes lookup table as two buffers
(``mesh_decoder.cases`` / ``mesh_decoder.masks``) that a freshly built renderer leaves
zeroed, so a random renderer would never emit a triangle. :func:`marching_cubes_table`
fills them from scikit-image's Lorensen marching cubes run on each of the 256 corner
patterns of one cube.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Corner c of a cube sits at (x, y, z) = (c & 1, c >> 1 & 1, c >> 2 & 1): the bit order
#: diffusers' MeshDecoder uses for its 8-bit case index.
#: Edge numbering of MeshDecoder (_create_flat_edge_indices): 0-3 span x at (y, z) =
#: (0,0) (1,0) (0,1) (1,1); 4-7 span y at (x, z) in the same order; 8-11 span z at (x, y).
_AXIS_BASE = {0: 0, 1: 4, 2: 8}
#: diffusers' HeunDiscreteScheduler (beta_schedule "exp") calls np.array on a torch
#: tensor in a way numpy 2 deprecates; harmless, and not ours to fix. Tests that load
#: the Shap-E pipeline ignore it (pytest turns warnings into errors).
HEUN_NUMPY_WARNING = "__array__ implementation doesn't accept a copy keyword"
IGNORE_HEUN_WARNING = f"ignore:{HEUN_NUMPY_WARNING}:DeprecationWarning"


def _edge_of(vertex: Any) -> int:
    """The MeshDecoder edge index of a marching-cubes vertex on a unit cube's edge."""
    coords = [float(v) for v in vertex]
    axis = next(i for i, v in enumerate(coords) if 0.0 < v < 1.0)
    a, b = (round(coords[i]) for i in range(3) if i != axis)
    return _AXIS_BASE[axis] + a + 2 * b


def marching_cubes_table() -> tuple[Any, Any]:
    """(cases [256, 5, 3] long, masks [256, 5] bool) in diffusers' MeshDecoder layout.

    A corner is inside when its bit is set (MeshDecoder sets it for field > 0).
    """
    import numpy as np
    import torch
    from skimage.measure import marching_cubes

    cases = torch.zeros(256, 5, 3, dtype=torch.long)
    masks = torch.zeros(256, 5, dtype=torch.bool)
    for case in range(1, 255):
        cube = np.empty((2, 2, 2), dtype=np.float32)
        for corner in range(8):
            x, y, z = corner & 1, corner >> 1 & 1, corner >> 2 & 1
            cube[x, y, z] = 1.0 if case >> corner & 1 else -1.0
        verts, faces, _, _ = marching_cubes(cube, level=0.0, method="lorensen")
        edges = [_edge_of(v) for v in verts]
        assert len(faces) <= 5, f"case {case} has {len(faces)} triangles"
        for i, face in enumerate(faces):
            cases[case, i] = torch.tensor([edges[j] for j in face])
            masks[case, i] = True
    return cases, masks


def _clip_tokenizer() -> Any:
    """A CLIP tokenizer over single bytes (no merges): every text tokenizes, offline."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(["<|startoftext|>", "<|endoftext|>"])}
    for s in symbols + [f"{s}</w>" for s in symbols]:
        vocab.setdefault(s, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text_config(tokenizer: Any, **extra: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        **extra,
    )


def build_text_to_image(folder: Path) -> Path:
    """Save a tiny random StableDiffusionPipeline to ``folder`` (default size 64×64)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    tokenizer = _clip_tokenizer()
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def _shap_e_parts(proj_dim: int, proj_norm: str | None) -> dict[str, Any]:
    """The prior (reading ``proj_dim``-wide conditioning), renderer and scheduler of a
    tiny random Shap-E pipeline, marching-cubes table filled."""
    import torch
    from diffusers import HeunDiscreteScheduler, PriorTransformer
    from diffusers.pipelines.shap_e import ShapERenderer

    torch.manual_seed(0)
    dim = 32  # latent width of the prior = d_latent of the renderer
    prior = PriorTransformer(
        num_attention_heads=2,
        attention_head_dim=16,
        embedding_dim=dim,
        num_embeddings=32,
        embedding_proj_dim=proj_dim,
        embedding_proj_norm_type=proj_norm,
        time_embed_dim=dim * 4,
        num_layers=1,
        clip_embed_dim=dim * 2,
        additional_embeddings=0,
        time_embed_act_fn="gelu",
        norm_in_type="layer",
        encoder_hid_proj_type=None,
        added_emb_type=None,
    )
    hidden = 8
    renderer = ShapERenderer(
        param_shapes=((hidden, 93), (hidden, hidden), (hidden, hidden), (hidden, hidden)),
        d_latent=dim,
        d_hidden=hidden,
        n_output=12,
        background=(0.1, 0.1, 0.1),
    )
    cases, masks = marching_cubes_table()
    renderer.mesh_decoder.cases.copy_(cases)
    renderer.mesh_decoder.masks.copy_(masks)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=HEUN_NUMPY_WARNING, category=DeprecationWarning)
        scheduler = HeunDiscreteScheduler(
            beta_schedule="exp",
            num_train_timesteps=1024,
            prediction_type="sample",
            use_karras_sigmas=True,
            clip_sample=True,
            clip_sample_range=1.0,
        )
    return {"prior": prior, "shap_e_renderer": renderer, "scheduler": scheduler}


def build_shap_e(folder: Path) -> Path:
    """Save a tiny random ShapEPipeline (text-to-3D) to ``folder``."""
    from diffusers import ShapEPipeline
    from transformers import CLIPTextModelWithProjection

    parts = _shap_e_parts(proj_dim=32, proj_norm=None)
    tokenizer = _clip_tokenizer()
    text_encoder = CLIPTextModelWithProjection(_text_config(tokenizer, projection_dim=32))
    ShapEPipeline(text_encoder=text_encoder, tokenizer=tokenizer, **parts).save_pretrained(folder)
    return folder


def build_shap_e_img2img(folder: Path) -> Path:
    """Save a tiny random ShapEImg2ImgPipeline (image-to-3D) to ``folder``: a CLIP vision
    encoder reading 32×32 pictures in 8×8 patches, whose 16 patch states condition the
    prior (as openai/shap-e-img2img's 256 do at 224×224)."""
    from diffusers import ShapEImg2ImgPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    side, width = 32, 32
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=width,
            image_size=side,
            patch_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
        )
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    parts = _shap_e_parts(proj_dim=width, proj_norm="layer")
    pipe = ShapEImg2ImgPipeline(image_encoder=image_encoder, image_processor=processor, **parts)
    pipe.save_pretrained(folder)
    return folder


def without_component(source: Path, folder: Path, component: str, keep_config: bool) -> Path:
    """A copy of pipeline ``source`` at ``folder`` that lacks ``component``: its whole
    folder, or (``keep_config``) only its weights, as a half-finished copy would."""
    shutil.copytree(source, folder)
    target = folder / component
    if keep_config:
        for weights in target.glob("*.safetensors"):
            weights.unlink()
    else:
        shutil.rmtree(target)
    return folder


@dataclass(frozen=True)
class TinyPipelines:
    """Folders of tiny pipelines: whole ones, and broken copies for failure tests."""

    image: Path  # StableDiffusionPipeline, 64×64 by default
    mesh: Path  # ShapEPipeline
    mesh_from_picture: Path  # ShapEImg2ImgPipeline
    image_without_unet_weights: Path  # unet/ has its config.json but no weights
    image_without_unet: Path  # no unet/ folder at all

    def models(self) -> dict[str, dict[str, str]]:
        """``[models]`` settings naming each folder (backend "diffusers")."""
        names = {
            "tiny_sd": self.image,
            "tiny_shap_e": self.mesh,
            "tiny_shap_e_img2img": self.mesh_from_picture,
            "half_copied_sd": self.image_without_unet_weights,
            "no_unet_sd": self.image_without_unet,
        }
        return {name: {"backend": "diffusers", "path": str(p)} for name, p in names.items()}

    def env(self) -> dict[str, str]:
        """The same as ``STOKER_MODELS__…`` variables, for worker subprocesses."""
        out = {}
        for name, entry in self.models().items():
            key = name.upper()
            out[f"STOKER_MODELS__{key}__BACKEND"] = entry["backend"]
            out[f"STOKER_MODELS__{key}__PATH"] = entry["path"]
        return out


def tiny_pipelines(base: Path) -> TinyPipelines:
    """Build (once per ``base``; a second call reuses the folders) every tiny pipeline."""
    built = TinyPipelines(
        image=base / "tiny-sd",
        mesh=base / "tiny-shap-e",
        mesh_from_picture=base / "tiny-shap-e-img2img",
        image_without_unet_weights=base / "half-copied-sd",
        image_without_unet=base / "no-unet-sd",
    )
    done = base / "built"
    if not done.exists():
        build_text_to_image(built.image)
        build_shap_e(built.mesh)
        build_shap_e_img2img(built.mesh_from_picture)
        without_component(built.image, built.image_without_unet_weights, "unet", keep_config=True)
        without_component(built.image, built.image_without_unet, "unet", keep_config=False)
        done.touch()
    return built
