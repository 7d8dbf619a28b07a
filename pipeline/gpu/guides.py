"""Guides that keep the photo in the clay picture: a structure guide (ControlNet on the photo's depth or edges)
and an identity guide (IP-Adapter fed the photo's face). Both are per style, off unless the style's config names
their model, and built on the already loaded img2img pipeline's components, so no SDXL weight loads twice.

* structure: ``StableDiffusionXLControlNetImg2ImgPipeline.from_pipe(img2img, controlnet=...)``; its control image
  is made here from each photo: a depth map (a transformers depth model such as Depth Anything V2 Small) or Canny
  edges (OpenCV).
* identity: ``load_ip_adapter`` into the shared UNet (one adapter per worker), the image encoder loaded by us from
  its own folder; the face box comes from an UltraFace-shaped ONNX detector (input 1×3×240×320 RGB (x−127)/128,
  outputs ``scores`` 1×N×2 and ``boxes`` 1×N×4 in corners, 0–1), or, with no detector configured, the whole photo
  (the image encoder's own centre crop). A photo where the detector finds no face is stylized without the adapter
  (scale 0 for that photo's sub-batch): pipelines take one adapter scale per call, so a batch is split by scale.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.core import models
from pipeline.core.errors import ModelError
from pipeline.core.settings import GpuSettings, IdentityGuide, StructureGuide
from pipeline.gpu.plan import Plan

logger = logging.getLogger(__name__)

CONTROLNET_FILES = ["config.json", "diffusion_pytorch_model.safetensors"]
DEPTH_FILES = ["config.json", "preprocessor_config.json", "model.safetensors"]
ENCODER_FILES = ["config.json", "model.safetensors"]
DETECTOR_INPUT = (320, 240)  # UltraFace RFB-320's input, width × height


# -- control images ----------------------------------------------------------------------------------------------


def canny_image(image: Image.Image, low: int, high: int) -> Image.Image:
    """The photo's Canny edges (white on black, three channels, the photo's size): SDXL canny ControlNets' input."""
    import cv2

    gray = np.asarray(image.convert("L"))
    edges = cv2.Canny(gray, low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


class DepthEstimator:
    """A transformers depth model (Depth Anything V2 and the like): photo → depth map, near = bright, 0–255."""

    def __init__(self, folder: Path, key: str, device: torch.device, dtype: torch.dtype) -> None:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        try:
            self.processor = AutoImageProcessor.from_pretrained(str(folder))
            self.model = AutoModelForDepthEstimation.from_pretrained(str(folder), dtype=dtype).to(device).eval()
        except Exception as err:
            raise ModelError(f"{key}: cannot load {folder} as a transformers depth model ({err})") from None
        self.device, self.dtype = device, dtype

    @torch.inference_mode()
    def __call__(self, images: list[Image.Image]) -> list[Image.Image]:
        inputs = self.processor(images=images, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        depth = self.model(pixel_values=pixels).predicted_depth.float()  # (batch, h, w), relative: larger = nearer
        maps = []
        for image, one in zip(images, depth, strict=True):
            one = torch.nn.functional.interpolate(one[None, None], size=(image.height, image.width), mode="bicubic",
                                                  align_corners=False)[0, 0]
            low, high = one.min(), one.max()
            # a flat depth (a blank photo) is black, not a division by zero
            scaled = (one - low) / (high - low) if high - low > 1e-6 else torch.zeros_like(one)
            gray = (scaled.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            maps.append(Image.fromarray(np.stack([gray] * 3, axis=-1)))
        return maps


# -- faces -------------------------------------------------------------------------------------------------------


class FaceDetector:
    """An UltraFace-shaped ONNX face detector: the most confident face's box, or None when none clears the bar."""

    def __init__(self, path: Path, key: str, use_cuda: bool) -> None:
        import onnxruntime as ort

        if path.is_dir():
            found = sorted(path.glob("*.onnx"))
            if len(found) != 1:
                raise ModelError(f"{key}: {path} holds {len(found)} .onnx files; name one")
            path = found[0]
        providers = (["CUDAExecutionProvider"] if use_cuda else []) + ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as err:
            raise ModelError(f"{key}: cannot load {path.name} as an ONNX model ({err})") from None
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        shape = self.session.get_inputs()[0].shape
        if set(outputs) != {"scores", "boxes"} or len(shape) != 4 or shape[1] != 3:
            raise ModelError(f"{key}: {path.name} is not an UltraFace-style detector (want one 1×3×H×W input and "
                             f"outputs 'scores' and 'boxes'; got {shape} → {sorted(outputs)})")
        self.input_name = self.session.get_inputs()[0].name
        h, w = shape[2], shape[3]
        self.size = (w, h) if isinstance(w, int) and isinstance(h, int) else DETECTOR_INPUT

    def __call__(self, image: Image.Image, threshold: float) -> tuple[float, float, float, float] | None:
        """The best face's box in 0–1 corners (x1, y1, x2, y2), or None."""
        pixels = np.asarray(image.convert("RGB").resize(self.size, Image.Resampling.BILINEAR), dtype=np.float32)
        batch = ((pixels - 127.0) / 128.0).transpose(2, 0, 1)[None]
        scores, boxes = self.session.run(["scores", "boxes"], {self.input_name: batch})
        face = scores[0, :, 1]
        best = int(np.argmax(face))
        if face[best] < threshold:
            return None
        x1, y1, x2, y2 = (float(v) for v in np.clip(boxes[0, best], 0.0, 1.0))
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            return None
        return x1, y1, x2, y2


def face_crop(image: Image.Image, box: tuple[float, float, float, float], margin: float) -> Image.Image:
    """A square crop around the face box, widened by ``margin`` of the box's size on every side."""
    x1, y1, x2, y2 = box[0] * image.width, box[1] * image.height, box[2] * image.width, box[3] * image.height
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    right, bottom = min(image.width, round(cx + side / 2)), min(image.height, round(cy + side / 2))
    return image.crop((left, top, max(right, left + 1), max(bottom, top + 1)))


# -- the guides together -----------------------------------------------------------------------------------------


@dataclass
class _Group:
    indices: list[int]
    structure_scale: float
    identity_scale: float
    faces: list[Image.Image | None]


class Guides:
    """Every style's guides, loaded once; ``denoise`` runs a batch through the right pipeline."""

    def __init__(self, pipe: Any, settings: GpuSettings, device: torch.device, dtype: torch.dtype) -> None:
        self.pipe, self.device, self.dtype = pipe, device, dtype
        # The styles' guide settings describe the models loaded here; each call's scales come in its Plan.
        self.styles = settings.styles
        self._controlnets: dict[str, object] = {}  # by the model's description: styles naming one model share it
        self._control_pipes: dict[str, Any] = {}
        self._depth: dict[str, DepthEstimator] = {}
        self._detectors: dict[str, FaceDetector] = {}  # by the model's description, as styles may differ
        self._embed_shape: tuple[int, ...] | None = None
        self.identity_loaded = False
        cache = settings.pipeline.cache_dir
        for name, style in settings.styles.items():
            if style.structure.enabled:
                self._load_structure(name, style.structure, cache)
        identities = [(name, s.identity) for name, s in settings.styles.items() if s.identity.enabled]
        if identities:
            self._load_identity(*identities[0], cache)  # one adapter (GpuSettings checks they all name the same)
        for name, guide in identities:
            spec = models.describe(guide.face_detector)
            if guide.face_detector and spec not in self._detectors:
                key = f"styles.{name}.identity.face_detector"
                path = models.resolve(guide.face_detector, key, cache, allow_patterns=["*.onnx"])
                self._detectors[spec] = FaceDetector(path, key, use_cuda=self.device.type == "cuda")

    # -- loading -------------------------------------------------------------------------------------------------

    def _load_structure(self, name: str, guide: StructureGuide, cache: str) -> None:
        from diffusers import ControlNetModel

        key = f"styles.{name}.structure.controlnet"
        spec = models.describe(guide.controlnet)
        if spec not in self._controlnets:
            path = models.resolve(guide.controlnet, key, cache, allow_patterns=CONTROLNET_FILES)
            try:
                if path.is_file():
                    if path.suffix.lower() != ".safetensors":
                        raise ModelError(f"{key}: {path.name} is not a .safetensors file")
                    controlnet = ControlNetModel.from_single_file(str(path), dtype=self.dtype, local_files_only=True)
                else:
                    controlnet = ControlNetModel.from_pretrained(path, dtype=self.dtype, use_safetensors=True)
            except ModelError:
                raise
            except Exception as err:
                raise ModelError(f"{key}: cannot load {spec} as an SDXL ControlNet ({err})") from None
            unet_width = self.pipe.unet.config.cross_attention_dim
            if controlnet.config.cross_attention_dim != unet_width:
                raise ModelError(f"{key}: {spec} is not made for this base model (cross-attention width "
                                 f"{controlnet.config.cross_attention_dim}, the UNet's is {unet_width})")
            self._controlnets[spec] = controlnet.to(self.device).eval()
        if guide.kind == "depth":
            depth_spec = models.describe(guide.depth_model)
            if depth_spec not in self._depth:
                depth_key = f"styles.{name}.structure.depth_model"
                folder = models.resolve(guide.depth_model, depth_key, cache, allow_patterns=DEPTH_FILES)
                self._depth[depth_spec] = DepthEstimator(folder, depth_key, self.device, self.dtype)
        logger.info("style %r: structure guide %s (%s) at scale %s", name, spec, guide.kind, guide.scale)

    def _load_identity(self, name: str, guide: IdentityGuide, cache: str) -> None:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        key = f"styles.{name}.identity"
        encoder_dir = models.resolve(guide.image_encoder, f"{key}.image_encoder", cache, allow_patterns=ENCODER_FILES)
        try:
            encoder = CLIPVisionModelWithProjection.from_pretrained(str(encoder_dir), dtype=self.dtype)
        except Exception as err:
            raise ModelError(f"{key}.image_encoder: cannot load {models.describe(guide.image_encoder)} as a CLIP "
                             f"image encoder ({err})") from None
        size = encoder.config.image_size
        self.pipe.register_modules(image_encoder=encoder.to(self.device).eval(),
                                   feature_extractor=CLIPImageProcessor(size=size, crop_size=size))
        path = models.resolve(guide.adapter, f"{key}.adapter", cache, allow_patterns=["*.safetensors"])
        if not path.is_file() or path.suffix.lower() != ".safetensors":
            raise ModelError(f"{key}.adapter: name the adapter's .safetensors file (e.g. repo:folder/file.safetensors)")
        try:
            self.pipe.load_ip_adapter(str(path.parent), subfolder="", weight_name=path.name,
                                      image_encoder_folder=None, local_files_only=True)
        except Exception as err:
            raise ModelError(f"{key}.adapter: cannot load {models.describe(guide.adapter)} as an SDXL IP-Adapter "
                             f"for this image encoder ({err})") from None
        from diffusers.models.embeddings import ImageProjection

        layer = self.pipe.unet.encoder_hid_proj.image_projection_layers[0]
        self._hidden_states = not isinstance(layer, ImageProjection)  # "plus" adapters read the encoder's hidden states
        self._embed_shape = None
        self._embed_shape = tuple(self._image_embeds([Image.new("RGB", (8, 8))], False)[0].shape[2:])
        self.identity_loaded = True
        logger.info("identity guide %s with image encoder %s", models.describe(guide.adapter),
                    models.describe(guide.image_encoder))

    def _control_pipe(self, style: str) -> Any:
        from diffusers import StableDiffusionXLControlNetImg2ImgPipeline

        spec = models.describe(self.styles[style].structure.controlnet)
        pipe = self._control_pipes.get(spec)
        if pipe is None or pipe.unet is not self.pipe.unet:  # built lazily: after a compiled UNet replaced the plain
            pipe = StableDiffusionXLControlNetImg2ImgPipeline.from_pipe(self.pipe, controlnet=self._controlnets[spec])
            pipe.set_progress_bar_config(disable=True)
            self._control_pipes[spec] = pipe
        return pipe

    # -- per photo -----------------------------------------------------------------------------------------------

    def control_images(self, style: str, images: list[Image.Image]) -> list[Image.Image]:
        """The structure guide's control image of each (working-size) photo."""
        guide = self.styles[style].structure
        if guide.kind == "canny":
            return [canny_image(image, guide.canny_low, guide.canny_high) for image in images]
        return self._depth[models.describe(guide.depth_model)](images)

    def faces(self, style: str, photos: list[Image.Image]) -> list[Image.Image | None]:
        """Each photo's face crop for the identity guide (the photo itself without a detector), None: no face."""
        guide = self.styles[style].identity
        if not guide.face_detector:
            return list(photos)
        detector = self._detectors[models.describe(guide.face_detector)]
        crops: list[Image.Image | None] = []
        for photo in photos:
            box = detector(photo, guide.face_threshold)
            crops.append(None if box is None else face_crop(photo, box, guide.face_margin))
        return crops

    @torch.inference_mode()
    def _image_embeds(self, faces: list[Image.Image | None], guidance: bool) -> list[torch.Tensor]:
        """IP-Adapter embeds for a sub-batch (negative half first under guidance); a face-less photo gets zeros."""
        encoder, extractor = self.pipe.image_encoder, self.pipe.feature_extractor
        stand_in = Image.new("RGB", (8, 8))
        if all(face is None for face in faces) and self._embed_shape is not None:
            # the adapter's scale is 0 for this sub-batch: its embeds are never read, so skip the image encoder
            zeros = torch.zeros((len(faces), 1, *self._embed_shape), device=self.device, dtype=encoder.dtype)
            return [torch.cat([zeros, zeros]) if guidance else zeros]
        pixels = extractor([face or stand_in for face in faces], return_tensors="pt").pixel_values
        pixels = pixels.to(self.device, encoder.dtype)
        if self._hidden_states:
            positive = encoder(pixels, output_hidden_states=True).hidden_states[-2]
            negative = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        else:
            positive = encoder(pixels).image_embeds
            negative = torch.zeros_like(positive)
        positive, negative = positive[:, None], negative[:, None]  # (batch, one image, …)
        return [torch.cat([negative, positive]) if guidance else positive]

    # -- running -------------------------------------------------------------------------------------------------

    def scales(self, style: str, overrides: Sequence[tuple[float | None, float | None]]
               ) -> tuple[tuple[float, float], ...]:
        """Each photo's (structure, identity) guide scale: its override, else the style's; 0 for a guide the style
        does not have (so an override never splits a batch for nothing)."""
        structure, identity = self.styles[style].structure, self.styles[style].identity
        return tuple(((structure.scale if s is None else s) if structure.enabled else 0.0,
                      (identity.scale if a is None else a) if identity.enabled else 0.0) for s, a in overrides)

    def denoise(
        self,
        plan: Plan,
        inputs: list[Image.Image],
        call: dict,
        *,
        on_step: Callable[[int, int], None] | None,
    ) -> list[Image.Image]:
        """Run ``inputs`` (working size) through the plan's style's pipeline; ``call`` holds the per-photo tensors
        (prompt embeds, generators) and shared arguments of a plain img2img call. Returns one image per input, in
        order.

        The one place a batch splits into pipeline calls: a pipeline takes one ControlNet scale and one IP-Adapter
        scale per call, and only here is it known which photos have a face (a face-less photo runs without the
        identity guide)."""
        style = plan.style
        structure, identity = self.styles[style].structure, self.styles[style].identity
        faces: list[Image.Image | None] = [None] * len(inputs)
        if identity.enabled:
            faces = self.faces(style, inputs)
        groups: dict[tuple[float, float], _Group] = {}
        for i, (s, a) in enumerate(plan.guide_scales):
            if faces[i] is None:
                a = 0.0  # no identity guide for this style, or no face in this photo
            group = groups.setdefault((s, a), _Group([], s, a, []))
            group.indices.append(i)
            group.faces.append(faces[i])
        total = plan.steps * len(groups)
        out: list[Image.Image | None] = [None] * len(inputs)
        for number, group in enumerate(groups.values()):
            done = number * plan.steps

            def step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict, done: int = done) -> dict:
                if on_step is not None:
                    on_step(done + step + 1, total)
                return callback_kwargs

            kwargs = {k: _take(v, group.indices) for k, v in call.items()}
            kwargs["image"] = [inputs[i] for i in group.indices]
            kwargs["callback_on_step_end"] = step_end
            pipe = self.pipe
            if structure.enabled:
                pipe = self._control_pipe(style)
                pipe.scheduler = plan.scheduler
                kwargs["control_image"] = self.control_images(style, kwargs["image"])
                kwargs["controlnet_conditioning_scale"] = group.structure_scale
                kwargs["control_guidance_start"] = structure.start
                kwargs["control_guidance_end"] = structure.end
            if self.identity_loaded:
                self.pipe.set_ip_adapter_scale(group.identity_scale)
                guidance = plan.guidance_scale > 1.0
                kwargs["ip_adapter_image_embeds"] = [
                    e.to(self.dtype) for e in self._image_embeds(group.faces, guidance)
                ]
            images = pipe(**kwargs).images
            for i, image in zip(group.indices, images, strict=True):
                out[i] = image
        return out  # type: ignore[return-value]


def _take(value: Any, indices: list[int]) -> Any:
    """A per-photo value (a list, or a tensor batched along dim 0) cut to the photos at ``indices``."""
    if isinstance(value, list):
        return [value[i] for i in indices]
    if isinstance(value, torch.Tensor) and value.ndim > 0:
        return value[indices]
    return value
