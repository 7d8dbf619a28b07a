"""Tiny random-weight models for the guides (pipeline.gpu.guides), real architectures in their real file formats.

* a ControlNet (``ControlNetModel.from_unet`` of the tiny SDXL UNet, diffusers folder), its zero convolutions
  given random weights so that it visibly acts (a freshly made ControlNet adds exact zeros);
* a Depth Anything model (``DepthAnythingForDepthEstimation`` with a tiny DINOv2 backbone) and its image processor,
  as a transformers folder, as depth-anything/Depth-Anything-V2-Small-hf is laid out;
* a CLIP image encoder (``CLIPVisionModelWithProjection``, transformers folder, as h94/IP-Adapter's
  models/image_encoder) and an IP-Adapter "plus" file in the ORIGINAL IP-Adapter key layout (``image_proj.latents``,
  ``image_proj.layers.N.0.to_kv.weight``…, ``ip_adapter.1.to_k_ip.weight``…) that diffusers' ``load_ip_adapter``
  converts, like ip-adapter-plus-face_sdxl_vit-h.safetensors;
* an UltraFace-shaped ONNX face detector (input ``input`` 1×3×240×320, outputs ``scores`` 1×4420×2 and ``boxes``
  1×4420×4) whose face score is ``sigmoid(12·(mean R − mean B) − 2)`` of the normalised input: warm (red-orange)
  photos have a face, blue or grey ones have none — tests pick either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ENCODER_HIDDEN = 32
ENCODER_IMAGE_SIZE = 32
ADAPTER_QUERIES = 4  # the real plus adapters use 16
ADAPTER_HIDDEN = 32
IP_STD = 0.5  # of the adapter's to_k_ip / to_v_ip weights: large enough to change a tiny result visibly
CONTROLNET_ZERO_CONV_STD = 0.05
DETECTOR_ANCHORS = 4420  # UltraFace version-RFB-320's prior count at 320×240
DETECTOR_SIZE = (240, 320)  # height, width


def _controlnet(unet: Any, seed: int) -> Any:
    from diffusers import ControlNetModel

    # the control image's embedding shrinks it 8× to the latents' size, as the tiny VAE does (and SDXL's)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32))
    generator = torch.Generator().manual_seed(seed + 11)
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                  controlnet.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in zero_convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * CONTROLNET_ZERO_CONV_STD)
    return controlnet.eval()


def _depth_model(folder: Path, seed: int) -> None:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            image_size=56, patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                                 fusion_hidden_size=16, head_hidden_size=8, patch_size=14,
                                 depth_estimation_type="relative")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 12)
        model = DepthAnythingForDepthEstimation(config).eval()
        # transformers' small initialisation and the head's final ReLU leave a tiny random model's depth flat (all
        # zeros): re-draw the matrices at unit gain and lift the last bias, so the map follows the photo
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.ndim >= 2 and "embeddings" not in name:
                    param.normal_(0.0, 1.0 / math.sqrt(param[0].numel()))
            model.head.conv3.bias.fill_(1.0)
    model.save_pretrained(str(folder))
    # Depth-Anything-V2-Small-hf's processor, at a tiny size
    DPTImageProcessor(do_resize=True, size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      resample=3, do_rescale=True, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225], do_pad=False).save_pretrained(str(folder))


def _image_encoder(folder: Path, seed: int) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=ENCODER_HIDDEN, intermediate_size=2 * ENCODER_HIDDEN, num_hidden_layers=2,
                              num_attention_heads=2, image_size=ENCODER_IMAGE_SIZE, patch_size=8,
                              projection_dim=ENCODER_HIDDEN)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 13)
        CLIPVisionModelWithProjection(config).eval().save_pretrained(str(folder))


def _resampler_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' IPAdapterPlusImageProjection names → the original IP-Adapter Resampler's (what load_ip_adapter
    converts back)."""
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        parts = name.split(".")
        if parts[0] != "layers":
            out[name] = value
            continue
        i, rest = parts[1], ".".join(parts[2:])
        if rest.startswith("ln0."):
            out[f"layers.{i}.0.norm1.{rest[4:]}"] = value
        elif rest.startswith("ln1."):
            out[f"layers.{i}.0.norm2.{rest[4:]}"] = value
        elif rest == "attn.to_q.weight":
            out[f"layers.{i}.0.to_q.weight"] = value
        elif rest == "attn.to_k.weight":
            out[f"layers.{i}.0.to_kv.weight"] = torch.cat([value, state[f"layers.{i}.attn.to_v.weight"]])
        elif rest == "attn.to_v.weight":
            continue
        elif rest == "attn.to_out.0.weight":
            out[f"layers.{i}.0.to_out.weight"] = value
        elif rest.startswith("ff.0."):
            out[f"layers.{i}.1.0.{rest[5:]}"] = value
        elif rest.startswith("ff.1.net.0.proj."):
            out[f"layers.{i}.1.1.{rest[len('ff.1.net.0.proj.'):]}"] = value
        elif rest.startswith("ff.1.net.2."):
            out[f"layers.{i}.1.3.{rest[len('ff.1.net.2.'):]}"] = value
        else:
            raise ValueError(f"no original IP-Adapter name for {name!r}")
    return out



def attention_width(processor_name: str, block_out_channels: Sequence[int]) -> int:
    """A UNet attention processor's hidden width, from its name ("down_blocks.1…", "mid_block…", "up_blocks.0…")."""
    if processor_name.startswith("mid_block"):
        return block_out_channels[-1]
    if processor_name.startswith("up_blocks"):
        return list(reversed(block_out_channels))[int(processor_name[len("up_blocks.")])]
    return block_out_channels[int(processor_name[len("down_blocks.")])]

def write_ip_adapter_plus(path: Path, unet: Any, seed: int = 0, *, encoder_hidden: int = ENCODER_HIDDEN,
                          hidden: int = ADAPTER_HIDDEN, heads: int = 1, queries: int = ADAPTER_QUERIES,
                          dtype: torch.dtype = torch.float32) -> None:
    """An IP-Adapter "plus" for ``unet`` in the original file layout (random weights); the defaults are tiny,
    h94's plus SDXL ViT-H adapters are encoder_hidden=1280, hidden=1280, heads=20, queries=16."""
    from diffusers.models.embeddings import IPAdapterPlusImageProjection
    from safetensors.torch import save_file

    cross = unet.config.cross_attention_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 14)
        projection = IPAdapterPlusImageProjection(embed_dims=encoder_hidden, output_dims=cross,
                                                  hidden_dims=hidden, heads=heads, num_queries=queries)
    state = {f"image_proj.{k}": v for k, v in _resampler_to_original(projection.state_dict()).items()}
    generator = torch.Generator().manual_seed(seed + 15)
    key_id = 1  # diffusers numbers the cross-attention processors 1, 3, 5… in unet.attn_processors order
    channels = unet.config.block_out_channels
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden = attention_width(name, channels)
        for kind in ("to_k_ip", "to_v_ip"):
            weight = torch.randn(hidden, cross, generator=generator) * IP_STD / cross**0.5
            state[f"ip_adapter.{key_id}.{kind}.weight"] = weight
        key_id += 2
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def write_face_detector(path: Path, seed: int = 0) -> Path:
    """An UltraFace-shaped ONNX detector (see the module's docstring for what it finds)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed + 16)
    n = DETECTOR_ANCHORS
    h, w = DETECTOR_SIZE
    # logits[a] = (background, face): face − background = 12·(R − B) − 2 + a small per-anchor jitter
    weight = np.zeros((3, n, 2), dtype=np.float32)
    weight[0, :, 1], weight[2, :, 1] = 12.0, -12.0
    bias = np.zeros((n, 2), dtype=np.float32)
    bias[:, 1] = -2.0 + rng.normal(0.0, 0.3, n)
    centres = rng.uniform(0.3, 0.7, (n, 2))
    sizes = rng.uniform(0.15, 0.4, (n, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)[None]
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["mean", "W"], ["flat"]),
        helper.make_node("Reshape", ["flat", "shape"], ["logits_raw"]),
        helper.make_node("Add", ["logits_raw", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=2),
        helper.make_node("Identity", ["anchors"], ["boxes"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_ultraface",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, n, 2]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, n, 4])],
        initializer=[
            numpy_helper.from_array(weight.reshape(3, n * 2), "W"),
            numpy_helper.from_array(np.array([1, n, 2], dtype=np.int64), "shape"),
            numpy_helper.from_array(bias[None], "b"),
            numpy_helper.from_array(boxes, "anchors"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="claybot-tiny")
    model.ir_version = 10  # onnx 1.23 writes IR 14, which onnxruntime 1.31/1.32 refuse
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_tiny_guides(out_dir: Path, unet: Any, seed: int = 0) -> dict[str, Path]:
    """Write every guide model under out_dir; the TinyModels fields they fill."""
    paths = {
        "controlnet_folder": out_dir / "controlnet",
        "depth_folder": out_dir / "depth",
        "ip_adapter": out_dir / "ip_adapter" / "ip-adapter-plus-face_tiny.safetensors",
        "image_encoder_folder": out_dir / "ip_adapter" / "image_encoder",
        "face_detector": out_dir / "face" / "ultraface_tiny.onnx",
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 10)
        _controlnet(unet, seed).save_pretrained(str(paths["controlnet_folder"]), safe_serialization=True)
    _depth_model(paths["depth_folder"], seed)
    _image_encoder(paths["image_encoder_folder"], seed)
    write_ip_adapter_plus(paths["ip_adapter"], unet, seed)
    write_face_detector(paths["face_detector"], seed)
    return paths
