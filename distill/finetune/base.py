"""The trainable base model: a Hugging Face id, a local model directory, or a GGUF file.

transformers reads GGUF but marks the model quantised and Trainer refuses to train it, so a GGUF
is dequantised ONCE into ``<data dir>/bases/<sha256[:16]>/`` (safetensors + tokenizer + chat
template, keyed by the GGUF's own sha256, with ``protege-base.json`` naming its source and file
hashes) and every later job on the same file reuses that directory. Runs in the job process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

BASE_INFO = "protege-base.json"


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes: how every artifact of a student is recorded and checked."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """{relative path: sha256} for every file under ``root`` (sorted, so manifests diff cleanly)."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def kind(base_model: str) -> str:
    """'gguf', 'dir' or 'hub' (a model id for users with network access or a warm HF cache)."""
    path = Path(base_model).expanduser()
    if path.suffix.lower() == ".gguf":
        return "gguf"
    if path.is_dir():
        return "dir"
    return "hub"


def cached_base(gguf: str | Path, bases_root: str | Path) -> Path | None:
    """The dequantised directory of this GGUF if it exists (and names the same source hash)."""
    import json

    digest = sha256_file(gguf)
    target = Path(bases_root) / digest[:16]
    try:
        info = json.loads((target / BASE_INFO).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return target if info.get("gguf_sha256") == digest else None


def dequantise_gguf(gguf: str | Path, bases_root: str | Path, *, log: Any = None) -> tuple[Path, bool]:
    """(directory of the trainable fp32 copy, whether it was made now). Safe against a concurrent job
    doing the same: each writes a private temporary directory and the first rename wins."""
    import json

    gguf = Path(gguf).expanduser().resolve()
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF file {gguf} does not exist")
    digest = sha256_file(gguf)
    bases_root = Path(bases_root)
    target = bases_root / digest[:16]
    hit = cached_base(gguf, bases_root)
    if hit is not None:
        return hit, False
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if log:
        log(f"Dequantising {gguf.name} once into {target.name} (reused by later jobs on the same file)")
    bases_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=bases_root, prefix=f".{digest[:16]}."))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.config.quantization_config = None  # now plain fp32 weights: trainable
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {"source": str(gguf), "gguf_sha256": digest, "files": hash_tree(tmp)}
        (tmp / BASE_INFO).write_text(json.dumps(info, indent=1))
        try:
            os.rename(tmp, target)
        except OSError:  # another job finished first (or a stale directory without a valid info file)
            if cached_base(gguf, bases_root) is None:
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, True


__all__ = ["BASE_INFO", "cached_base", "dequantise_gguf", "hash_tree", "kind", "sha256_file"]
