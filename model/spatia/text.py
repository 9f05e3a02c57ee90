"""Prompt embeddings for the Spatia network: the Wan2.2 UMT5 text encoder, or precomputed embeddings.

Wan2.2 encodes prompts with UMT5-XXL (4096-d) to at most 512 tokens; padding positions are zeroed after the encoder
(diffusers ``WanPipeline._get_t5_prompt_embeds``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from spatia.world.errors import InvalidInputError, NotFoundError

MAX_PROMPT_TOKENS = 512


@runtime_checkable
class PromptEncoder(Protocol):
    text_dim: int

    def encode(self, prompt: str) -> torch.Tensor:
        """-> [1, L, text_dim] float32 prompt embeddings."""
        ...


class UMT5PromptEncoder:
    """A Hugging Face tokenizer + ``UMT5EncoderModel`` (Wan2.2's ``tokenizer/`` and ``text_encoder/`` folders)."""

    def __init__(self, tokenizer, text_encoder, max_length: int = MAX_PROMPT_TOKENS,
                 device: str | torch.device = "cpu") -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.to(device).eval()
        self.max_length = int(max_length)
        self.device = torch.device(device)
        self.text_dim = int(text_encoder.config.d_model)

    @classmethod
    def from_pretrained(cls, weights_dir: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "UMT5PromptEncoder":
        from transformers import AutoTokenizer, UMT5EncoderModel

        root = Path(weights_dir)
        for sub in ("tokenizer", "text_encoder"):
            if not (root / sub).is_dir():
                raise NotFoundError(f"{root / sub} not found (expected a diffusers-format Wan2.2 directory)")
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        encoder = UMT5EncoderModel.from_pretrained(root / "text_encoder", torch_dtype=dtype)
        return cls(tokenizer, encoder, device=device)

    @torch.no_grad()
    def encode(self, prompt: str) -> torch.Tensor:
        tokens = self.tokenizer(
            [prompt], padding="max_length", max_length=self.max_length, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device)
        hidden = self.text_encoder(ids, mask).last_hidden_state.float()
        # Zero the padding positions (diffusers WanPipeline: trim to the prompt length, zero-pad back).
        return hidden * mask[..., None].to(hidden.dtype)


class ByteTokenizer:
    """UTF-8 bytes as token ids (0 = pad, 1 = end, byte b -> b + 2): the tokenizer of the tiny random UMT5 used in
    tests and ``spatia-tiny`` runs, where no SentencePiece model can be downloaded. Same call interface as a Hugging
    Face tokenizer for what ``UMT5PromptEncoder`` uses."""

    vocab_size = 258

    def __call__(self, prompts: list[str], padding: str = "max_length", max_length: int = MAX_PROMPT_TOKENS,
                 truncation: bool = True, add_special_tokens: bool = True, return_attention_mask: bool = True,
                 return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        ids = torch.zeros(len(prompts), max_length, dtype=torch.long)
        mask = torch.zeros(len(prompts), max_length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            seq = [b + 2 for b in prompt.encode("utf-8")][: max_length - 1] + [1]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def tiny_prompt_encoder(text_dim: int = 32, max_length: int = 64, seed: int = 0) -> UMT5PromptEncoder:
    """A tiny random UMT5 encoder (same class as Wan2.2's) with the byte tokenizer."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=ByteTokenizer.vocab_size, d_model=text_dim, d_kv=8, d_ff=64, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = UMT5EncoderModel(config).eval()
    return UMT5PromptEncoder(ByteTokenizer(), encoder, max_length=max_length)


class PrecomputedPromptEmbeddings:
    """Prompt -> embeddings table, e.g. computed once on a machine with the 11 GB UMT5-XXL.

    File format (``save`` / ``load``): a safetensors file with tensors ``prompt_{i}`` [L, text_dim] and metadata
    ``prompt_{i}`` = the prompt text.
    """

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        if not table:
            raise InvalidInputError("PrecomputedPromptEmbeddings needs at least one prompt")
        dims = {int(v.shape[-1]) for v in table.values()}
        if len(dims) != 1:
            raise InvalidInputError(f"all embeddings must share text_dim, got {sorted(dims)}")
        self.table = {k: (v[None] if v.ndim == 2 else v).float() for k, v in table.items()}
        self.text_dim = dims.pop()

    def encode(self, prompt: str) -> torch.Tensor:
        if prompt not in self.table:
            raise NotFoundError(f"no precomputed embedding for prompt {prompt[:80]!r} ({len(self.table)} known)")
        return self.table[prompt]

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        tensors = {f"prompt_{i}": v[0].contiguous() for i, v in enumerate(self.table.values())}
        metadata = {f"prompt_{i}": k for i, k in enumerate(self.table)}
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> "PrecomputedPromptEmbeddings":
        from safetensors import safe_open

        if not Path(path).is_file():
            raise NotFoundError(f"prompt embeddings file {path} not found")
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            return cls({metadata[k]: f.get_tensor(k) for k in f.keys() if k in metadata})

    @classmethod
    def from_encoder(cls, encoder: PromptEncoder, prompts: list[str]) -> "PrecomputedPromptEmbeddings":
        return cls({p: encoder.encode(p).cpu() for p in dict.fromkeys(prompts)})


def prompt_digest(prompt: str) -> str:
    """Short stable id of a prompt (cache keys)."""
    import hashlib

    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:12]


__all__ = ["PromptEncoder", "UMT5PromptEncoder", "ByteTokenizer", "tiny_prompt_encoder",
           "PrecomputedPromptEmbeddings", "prompt_digest", "MAX_PROMPT_TOKENS"]

