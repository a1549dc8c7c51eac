"""``protege finetune export``: a LoRA student as files another server runs, with instructions.

- ``hf``: the merged model (safetensors) + tokenizer + chat template: ``from_pretrained(DIR)``.
- ``vllm``: the adapter (``vllm serve BASE --enable-lora --lora-modules name=DIR/adapter``), or with
  ``merge`` the merged directory served as is.
- ``ollama``: a ``Modelfile``; ``FROM base`` + ``ADAPTER`` for the Llama, Mistral and Gemma families
  (the ones Ollama documents adapters for), otherwise ``FROM`` the merged model.

Every export verifies the student's recorded hashes first and writes a README.md with the exact
commands for that directory. torch/transformers/peft are imported only when a merge is needed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protege.store import jobs as store_jobs

from protege.distill.finetune.interface import FineTuneError
from protege.distill.finetune.base import sha256_file
from protege.distill.finetune.students import parse_model

FORMATS = ("hf", "vllm", "ollama")
OLLAMA_ADAPTER_FAMILIES = ("llama", "mistral", "gemma", "gemma2", "gemma3")


@dataclass
class Student:
    """A recorded LoRA student version, its files checked against the manifest."""

    name: str
    version: int
    folder: Path
    manifest: dict[str, Any]
    data_dir: Path

    @property
    def model(self) -> str:
        return f"protege/{self.name}@v{self.version}"

    def path(self, key: str) -> Path | None:
        rel = self.manifest.get(key)
        return self.folder / rel if rel else None

    def base_path(self) -> str:
        """What to load the base from: the dequantised directory, or the model as the user gave it."""
        if self.manifest.get("base_dir"):
            return str((self.data_dir / self.manifest["base_dir"]).resolve())
        return str(self.manifest["base_model"])

    def model_type(self) -> str | None:
        for folder in (self.path("merged_dir"), Path(self.base_path())):
            cfg = folder / "config.json" if folder else None
            if cfg and cfg.is_file():
                return json.loads(cfg.read_text()).get("model_type")
        return None


def _resolve_path(data_dir: Path, p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() else data_dir / path


def resolve_student(store, ref: str) -> Student:
    """``ftjob_...`` (its resulting student) or ``protege/<name>[@vN]``."""
    if ref.startswith("ftjob_"):
        job = store_jobs.get_job(store, ref)
        if job is None:
            raise FineTuneError(f"no fine-tuning job {ref}", param="id", code="job_not_found", status=404)
        if not job.get("fine_tuned_model"):
            raise FineTuneError(f"job {ref} has no student yet (status {job['status']})", param="id", code="model_not_found")
        ref = job["fine_tuned_model"]
    parsed = parse_model(ref if ref.startswith("protege/") else f"protege/{ref}")
    if parsed is None:
        raise FineTuneError(f"expected ftjob_... or protege/<name>[@vN], not {ref!r}", param="model", code="model_not_found")
    row = store_jobs.get_student(store, *parsed)
    if row is None:
        raise FineTuneError(f"no student {ref}", param="model", code="model_not_found", status=404)
    data_dir = Path(store.data_dir)
    manifest_path = _resolve_path(data_dir, row["manifest_path"])
    if not manifest_path.is_file() or sha256_file(manifest_path) != row["sha256"]:
        raise FineTuneError(f"{manifest_path} is missing or does not match its recorded sha256", code="artifact_tampered", status=500)
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("kind") != "lora":
        raise FineTuneError(f"{ref} is not a LoRA student (the classifier student has nothing to export)", param="model", code="not_lora")
    student = Student(parsed[0], int(row["version"]), manifest_path.parent, manifest, data_dir)
    verify(student)
    return student


def verify(student: Student) -> None:
    for rel, digest in (student.manifest.get("files") or {}).items():
        path = student.folder / rel
        if not path.is_file() or sha256_file(path) != digest:
            raise FineTuneError(f"student file {path} is missing or does not match its recorded sha256", code="artifact_tampered", status=500)


def load_model(student: Student, *, merged: bool = True):
    """(model, tokenizer) as serving loads them: the merged weights when present, else base + adapter
    (``merged=True`` folds the adapter in, as an export writes it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student.path("tokenizer_dir"))
    merged_dir = student.path("merged_dir")
    if merged_dir is not None:
        return AutoModelForCausalLM.from_pretrained(merged_dir), tokenizer
    from peft import PeftModel

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(student.base_path()), student.path("adapter_dir"))
    return (model.merge_and_unload() if merged else model), tokenizer


def _write_merged(student: Student, target: Path) -> None:
    merged_dir = student.path("merged_dir")
    if merged_dir is not None:
        shutil.copytree(merged_dir, target)
    else:
        model, tokenizer = load_model(student, merged=True)
        model.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)
    shutil.copytree(student.path("tokenizer_dir"), target, dirs_exist_ok=True)


def export(store, ref: str, fmt: str, out: str | Path, *, merge: bool | None = None) -> dict[str, Any]:
    """Write the export into ``out`` (must be empty or absent); returns what was written."""
    if fmt not in FORMATS:
        raise FineTuneError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}", param="format")
    student = resolve_student(store, ref)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FineTuneError(f"{out} is not empty", param="out")
    out.mkdir(parents=True, exist_ok=True)
    family = student.model_type()
    if merge is None:
        merge = fmt == "hf" or (fmt == "ollama" and family not in OLLAMA_ADAPTER_FAMILIES)
    if fmt == "hf" and not merge:
        raise FineTuneError("the hf format is the merged model; use --format vllm for the adapter alone", param="merge")
    written: dict[str, Any] = {"format": fmt, "out": str(out), "model": student.model, "merged": merge}
    if merge:
        _write_merged(student, out / "merged")
        written["merged_dir"] = str(out / "merged")
    else:
        shutil.copytree(student.path("adapter_dir"), out / "adapter")
        shutil.copytree(student.path("tokenizer_dir"), out / "tokenizer")
        written["adapter_dir"] = str(out / "adapter")
    readme = _readme(student, fmt, out, merge, family)
    if fmt == "ollama":
        (out / "Modelfile").write_text(_modelfile(student, out, merge))
        written["modelfile"] = str(out / "Modelfile")
    (out / "README.md").write_text(readme)
    (out / "protege-export.json").write_text(json.dumps({**written, "manifest": student.manifest}, indent=1))
    written["readme"] = str(out / "README.md")
    return written


def _modelfile(student: Student, out: Path, merge: bool) -> str:
    tokenizer_cfg = student.path("tokenizer_dir") / "tokenizer_config.json"
    eos = None
    if tokenizer_cfg.is_file():
        eos = json.loads(tokenizer_cfg.read_text()).get("eos_token")
    lines = [f"# {student.model}, exported by Protege"]
    if merge:
        lines.append(f"FROM {(out / 'merged').resolve()}")
    else:
        base = student.manifest["base_model"] if str(student.manifest["base_model"]).endswith(".gguf") else student.base_path()
        lines += [f"FROM {base}", f"ADAPTER {(out / 'adapter').resolve()}"]
    if isinstance(eos, str):
        lines.append(f'PARAMETER stop "{eos}"')
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def _readme(student: Student, fmt: str, out: Path, merge: bool, family: str | None) -> str:
    m = student.manifest
    name = student.name
    absout = out.resolve()
    head = [
        f"# {student.model} (LoRA student exported by Protege)",
        "",
        f"- base model: `{m.get('base_model')}`" + (f" (trainable copy: `{student.base_path()}`)" if m.get("base_dir") else ""),
        f"- method: {m.get('method')}; trained by job `{m.get('job_id')}`; metrics: "
        + ", ".join(f"{k}={v}" for k, v in (m.get("metrics") or {}).items() if not isinstance(v, (list, dict))),
        f"- contents: {'`merged/` (the adapter folded into the base weights, safetensors, with tokenizer and chat template)' if merge else '`adapter/` (PEFT LoRA adapter) and `tokenizer/` (tokenizer and chat template)'}",
        "",
    ]
    body: list[str] = []
    if fmt == "hf" or merge:
        body += [
            "## transformers",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'tok = AutoTokenizer.from_pretrained("{absout / "merged"}")',
            f'model = AutoModelForCausalLM.from_pretrained("{absout / "merged"}")',
            'ids = tok.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True, return_tensors="pt")',
            'print(tok.decode(model.generate(**ids, max_new_tokens=64, do_sample=False)[0][ids["input_ids"].shape[1]:], skip_special_tokens=True))',
            "```",
            "",
        ]
    if fmt == "vllm":
        body += ["## vLLM", ""]
        if merge:
            body += ["```sh", f"vllm serve {absout / 'merged'} --served-model-name {name}", "```"]
        else:
            base = m.get("base_model") if not m.get("base_dir") else student.base_path()
            body += [
                "```sh",
                f"vllm serve {base} --enable-lora --lora-modules {name}={absout / 'adapter'} --max-lora-rank {max(8, int((m.get('hyperparameters') or {}).get('lora_r') or 16))}",
                "```",
                "",
                f'The request\'s `"model": "{name}"` picks the adapter (the base stays available under its own name).',
            ]
            if m.get("base_dir"):
                body += ["", f"The base was a GGUF file; `{base}` is its dequantised safetensors copy, which vLLM loads directly."]
        body += ["", "Then, with any OpenAI client: `curl localhost:8000/v1/chat/completions -H 'content-type: application/json' -d '{\"model\": \"" + name + "\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'`", ""]
    if fmt == "ollama":
        body += [
            "## Ollama",
            "",
            "```sh",
            f"ollama create {name} -f {absout / 'Modelfile'}",
            f"ollama run {name}",
            "```",
            "",
            "Ollama documents LoRA adapters (`ADAPTER`) for the Llama, Mistral and Gemma families only; "
            + (
                f"this base is `{family}`, so the Modelfile uses `FROM base` + `ADAPTER`."
                if not merge
                else f"this base is `{family}`, so the export is the merged model and the Modelfile imports it with `FROM`."
            ),
            "",
        ]
    return "\n".join(head + body)


__all__ = ["FORMATS", "Student", "export", "load_model", "resolve_student", "verify"]
