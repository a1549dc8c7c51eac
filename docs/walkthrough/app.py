"""The README walkthrough's "application": topic classification sent through the Protege proxy.

It plays a production app that already calls a teacher model: the official ``openai`` SDK, a long
system prompt (what a student will not need), OpenAI's ``metadata`` to tag the task and the user.
It sends ``--requests`` questions from chatterbot-corpus (``corpus.py``), starting at ``--skip``
so that a later run sends questions the first never did, streams every fifth one, then lists the
newest captures back through the Stored Completions API:

    python docs/walkthrough/app.py --base-url http://127.0.0.1:8011/v1 --requests 300

It prints the Unix time its first request was sent (``since`` for an eval over these requests
only), the last answer, and the two newest captures with ``task=topic``. It waits up to 30 s for
the proxy to answer ``/healthz`` before sending, so it can follow ``protege serve &`` at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request
from pathlib import Path

from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import questions  # noqa: E402  (a sibling file: this is a script, not a package)

SYSTEM = (
    "You are the topic router of a customer assistant. Read the user's message and decide which team "
    "should answer it. The topics are: tech (problems with a device, an account or an installation), "
    "coding (programming languages, code and software development), ai (artificial intelligence, "
    "chatbots and their nature), trivia (general knowledge questions about history, science, "
    "geography and culture). Answer with one JSON object and nothing else: {\"label\": \"<topic>\"}."
)


def wait_healthy(base_url: str, timeout: float = 30.0) -> None:
    url = base_url.rstrip("/").removesuffix("/v1") + "/healthz"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"app: no answer from {url} after {timeout:.0f} s")
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8011/v1", help="the proxy's OpenAI base URL")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--skip", type=int, default=0, help="start at this question of the corpus")
    parser.add_argument("--model", default="gpt-4o-mini")
    args = parser.parse_args()

    pairs = questions()[args.skip : args.skip + args.requests]
    if len(pairs) < args.requests:
        raise SystemExit(f"app: the corpus has {len(questions())} questions; --skip {args.skip} leaves {len(pairs)}")
    wait_healthy(args.base_url)
    # The stand-in teacher takes any key; a real upstream gets the proxy's own key when this is unset.
    client = OpenAI(base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY") or "unused-by-the-walkthrough")
    since = int(time.time())
    streamed, last_id, answer = 0, "", ""
    for i, (question, _topic) in enumerate(pairs):
        kwargs = dict(
            model=args.model,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            metadata={"task": "topic", "user": f"u{i % 10}"},
        )
        if i % 5 == 4:
            streamed += 1
            parts = []
            for chunk in client.chat.completions.create(stream=True, **kwargs):
                last_id = chunk.id
                parts += [c.delta.content or "" for c in chunk.choices]
            answer = "".join(parts)
        else:
            r = client.chat.completions.create(**kwargs)
            last_id, answer = r.id, r.choices[0].message.content or ""
    print(f"{len(pairs)} requests ({streamed} streamed) since {since}; last answer: {answer}")

    # Captures are written behind the answers (within flush_interval): wait for the last one to be listed.
    deadline = time.monotonic() + 10
    while True:
        page = client.chat.completions.list(metadata={"task": "topic"}, limit=2, order="desc")
        if (page.data and page.data[0].id == last_id) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for c in page.data:
        print(c.id, c.model, c.metadata, c.choices[0].message.content)


if __name__ == "__main__":
    main()
