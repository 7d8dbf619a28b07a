"""A1111-syntax prompts → SDXL conditioning for both text encoders, weights honoured, no truncation at 77 tokens.

compel does the real work (weighting per token, chunking long prompts into 75-token windows for each encoder).
We feed it our own parse of A1111 syntax instead of compel's syntax, so booru tags such as ``;-)`` or ``-_-``
are never read as compel's ``+``/``-`` weight operators.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from compel import Compel, ReturnedEmbeddingsType
from compel.prompt_parser import Conjunction, FlattenedPrompt, Fragment

from pipeline.gpu.prompt import parse_attention, plain_text


class _A1111Compel(Compel):
    """Compel that reads A1111 weight syntax and pools the prompt's plain words."""

    @classmethod
    def parse_prompt_string(cls, prompt_string: str) -> Conjunction:
        fragments = [Fragment(text, weight) for text, weight in parse_attention(prompt_string)]
        return Conjunction([FlattenedPrompt(fragments)])

    def build_conditioning_tensor(self, text: str, return_tokenization: bool = False) -> Any:  # noqa: D102
        conjunction = self.parse_prompt_string(text)
        conditioning, tokenization, _options = self.build_conditioning_tensor_for_conjunction(
            conjunction, return_tokenization=True
        )
        if not self.requires_pooled:
            return (conditioning, tokenization) if return_tokenization else conditioning
        pooled = self.conditioning_provider.get_pooled_embeddings([plain_text(text)], device=self.device)
        return (conditioning, tokenization, pooled) if return_tokenization else (conditioning, pooled)


@dataclass(frozen=True)
class Conditioning:
    """The four tensors StableDiffusionXL pipelines take instead of prompt strings."""

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    negative_pooled_prompt_embeds: torch.Tensor


class PromptEncoder:
    """Encodes a batch of prompts (plus one negative prompt) with an SDXL pipeline's two text encoders."""

    def __init__(self, pipe: Any, device: torch.device) -> None:
        common = dict(
            returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
            truncate_long_prompts=False,
            device=device,
        )
        self.encoder_1 = _A1111Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, **common)
        self.encoder_2 = _A1111Compel(
            tokenizer=pipe.tokenizer_2, text_encoder=pipe.text_encoder_2, requires_pooled=True, **common
        )
        # Without this, compel skips its weighting path for prompts with no weights; one path keeps batches uniform.
        self.encoder_1.disable_no_weights_bypass()
        self.encoder_2.disable_no_weights_bypass()

    @torch.no_grad()
    def __call__(self, prompts: list[str], negative_prompt: str) -> Conditioning:
        """Embeddings for each prompt and, as many times, for the negative prompt; all padded to one length."""
        texts = [*prompts, *([negative_prompt] * len(prompts))]
        left = self.encoder_1(texts)
        right, pooled = self.encoder_2(texts)
        # The two tokenizers may chunk differently; pad the shorter sequence with the empty prompt's embedding.
        left, right = self._same_length(left, right)
        embeds = torch.cat([left, right], dim=-1)
        n = len(prompts)
        return Conditioning(embeds[:n], pooled[:n], embeds[n:], pooled[n:])

    def _same_length(self, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if left.shape[1] == right.shape[1]:
            return left, right
        if left.shape[1] < right.shape[1]:
            padding = self.encoder_1([""])
            repeats = (right.shape[1] - left.shape[1]) // padding.shape[1]
            return torch.cat([left, padding.repeat(left.shape[0], repeats, 1)], dim=1), right
        padding, _ = self.encoder_2([""])
        repeats = (left.shape[1] - right.shape[1]) // padding.shape[1]
        return left, torch.cat([right, padding.repeat(right.shape[0], repeats, 1)], dim=1)
