"""The README walkthrough runner (docs/walkthrough/run.py): its parser, normaliser and id mapping on
small README-like texts (fast, in CI), its shell on a few real commands (background jobs, ``kill %1``,
cleanup of what it started), and the whole walkthrough end to end.

The end-to-end test runs every ``$ `` line of README.md (minutes: the LoRA training of section 4)
and asserts that no command failed. It is skipped unless ``PROTEGE_WALKTHROUGH=1`` is set;
``PROTEGE_WALKTHROUGH_SECTIONS`` (e.g. ``1-5``) limits it to some sections.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "docs" / "walkthrough" / "run.py"
_spec = importlib.util.spec_from_file_location("walkthrough_run", RUN)
run = importlib.util.module_from_spec(_spec)
sys.modules["walkthrough_run"] = run  # dataclasses look their module up by name
_spec.loader.exec_module(run)

README = """# Tool

```bash
tool serve            # an illustration: never run
```

## 1. Start

```text
$ tool serve --port 8011 &
$ tool make --name x
ds_18ea44dd847531c41a908c97  x v1: 240 train in 12 ms
  card: /tmp/walk/data/ds_18ea44dd847531c41a908c97/README.md
$ tool show ds_18ea44dd847531c41a908c97 \\
    --verbose
ds_18ea44dd847531c41a908c97 created 2026-11-22 04:51:55 (1795323124)
```

```text
topics: gate failed (label_accuracy ...)
```

## 2. Post

```text
$ curl -s -X POST localhost:8011/x -d '{"name": "a",
    "since": 1795323124}'
{"ok": true}

$ cat > p.toml <<'EOF'
[policy]
$ not a command: inside the heredoc
EOF
```

## Web console

```text
$ tool ui
```
"""


def test_parser_finds_the_dollar_lines_of_text_blocks_in_numbered_sections():
    steps = run.parse(README)
    assert [(s.section, s.command.splitlines()[0]) for s in steps] == [
        (1, "tool serve --port 8011 &"),
        (1, "tool make --name x"),
        (1, "tool show ds_18ea44dd847531c41a908c97 \\"),
        (2, """curl -s -X POST localhost:8011/x -d '{"name": "a","""),
        (2, "cat > p.toml <<'EOF'"),
        (None, "tool ui"),  # after a heading that is not numbered: not part of the walkthrough
    ]
    serve, make, show, post, heredoc, _ui = steps
    assert serve.background and not make.background and not post.background
    assert serve.shown == []
    assert make.shown == ["ds_18ea44dd847531c41a908c97  x v1: 240 train in 12 ms",
                          "  card: /tmp/walk/data/ds_18ea44dd847531c41a908c97/README.md"]
    # a backslash continues a command; so does an open quote (a JSON body over several lines)
    assert show.command == "tool show ds_18ea44dd847531c41a908c97 \\\n    --verbose"
    assert show.shown == ["ds_18ea44dd847531c41a908c97 created 2026-11-22 04:51:55 (1795323124)"]
    assert post.command.endswith('"since": 1795323124}\'') and post.shown == ['{"ok": true}', ""]
    # a heredoc is the command's input, `$ ` lines in it included
    assert heredoc.command.splitlines()[1:] == ["[policy]", "$ not a command: inside the heredoc", "EOF"]
    assert heredoc.shown == []
    assert [s.section for s in run.select(steps, run.parse_sections("2-3"))] == [2, 2]
    assert len(run.select(steps, None)) == 5
    assert run.parse_sections("1-3,6") == {1, 2, 3, 6}


def test_background_is_a_trailing_ampersand_not_and_and():
    assert run.Step(1, 0, 1, "serve &", []).background
    assert run.Step(1, 0, 1, "serve &   # the proxy", []).background
    assert not run.Step(1, 0, 1, "kill %2 && wait %2", []).background
    assert not run.Step(1, 0, 1, "echo a & echo b", []).background


def test_normaliser_keeps_what_matters_and_hides_what_changes_from_run_to_run():
    shown = ["ds_18ea44dd847531c41a908c97  x v1: 240 train in 12 ms  (1795323124, 2026-11-22 04:51:55)",
             "chatcmpl-28a36507ada34389db97eb9c gpt-4o-mini-2024-07-18 ETA 126s train_seconds=196.94",
             "vllm serve /tmp/walk/protege-data/bases/b179c9523d0e6a0f", ""]
    real = ["ds_18f0a1b2c3d4e5f6a7b8c9d0 x v1: 240 train in 3.5 ms  (1796167668, 2026-12-01 23:27:48)",
            "chatcmpl-qGSkLVxlOanA6dAOlkUyp19UoSNS4 gpt-4o-mini-2024-07-18 ETA 80s train_seconds=88.1",
            "vllm serve /tmp/protege-walk-x1/protege-data/bases/0123456789abcdef"]
    assert run.normalise(shown) == run.normalise(real, workdir="/tmp/protege-walk-x1")
    assert run.normalise(shown)[1] == "chatcmpl-<id> gpt-4o-mini-2024-07-18 ETA <duration> train_seconds=<duration>"
    # counts, names, model snapshots and words are compared
    for before, after in [("240 train", "241 train"), (" x v1", " x v2"), ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-08-06"),
                          ("ETA 126s", "ETA 126s (resumed)"), ("bases/", "base/")]:
        other = [line.replace(before, after) for line in shown]
        assert other != shown and run.normalise(other) != run.normalise(shown), after
    assert run.normalise(["a   b\t c  ", "", ""]) == ["a b c"]  # column widths and trailing blank lines


def test_ids_and_times_a_later_command_quotes_are_mapped_to_this_runs():
    mapping: dict[str, str] = {}
    run.learn(mapping, ["ftjob_18ea44de80f88b177c59b2cb started", "since 1795323127; chatcmpl-28a36507ada34389db97eb9c"],
              ["ftjob_18f0000000000000000000aa started", "since 1796167668; chatcmpl-qGSkLVxlOanA6dAOlkUyp19UoSNS4"])
    assert mapping == {"ftjob_18ea44de80f88b177c59b2cb": "ftjob_18f0000000000000000000aa", "1795323127": "1796167668",
                       "chatcmpl-28a36507ada34389db97eb9c": "chatcmpl-qGSkLVxlOanA6dAOlkUyp19UoSNS4"}
    cmd = run.substitute('protege finetune events ftjob_18ea44de80f88b177c59b2cb; curl -d \'{"since": 1795323127}\'', mapping)
    assert cmd == 'protege finetune events ftjob_18f0000000000000000000aa; curl -d \'{"since": 1796167668}\''
    assert run.substitute("x17953231270", mapping) == "x17953231270"  # only whole values
    # a value the README shows twice means what the latest output printed
    run.learn(mapping, ["since 1795323127"], ["since 1796168000"])
    assert run.substitute('"since": 1795323127', mapping) == '"since": 1796168000'
    # where the counts disagree nothing is guessed
    again: dict[str, str] = {}
    run.learn(again, ["ds_18ea44dd847531c41a908c97"], ["ds_18f0a1b2c3d4e5f6a7b8c9d0 ds_18f0a1b2c3d4e5f6a7b8c9d1"])
    assert again == {}


def test_update_rewrites_commands_and_output_and_keeps_failed_output(tmp_path):
    steps = run.parse(README)
    make, show = steps[1], steps[2]
    results = [
        run.Result(make, "differs", make.command, ["ds_18f0a1b2c3d4e5f6a7b8c9d0  x v1: 241 train in 3 ms"]),
        run.Result(show, "failed", "tool show ds_18f0a1b2c3d4e5f6a7b8c9d0 \\\n    --verbose", ["boom"], exit_code=1),
    ]
    text = run.updated(README, results)
    assert "$ tool make --name x\nds_18f0a1b2c3d4e5f6a7b8c9d0  x v1: 241 train in 3 ms\n$ tool show ds_18f0a1b2c3d4e5f6a7b8c9d0 \\\n    --verbose\n" \
        "ds_18ea44dd847531c41a908c97 created" in text
    assert "boom" not in text and "card: /tmp/walk" not in text
    assert text.count("\n") == README.count("\n") - 1  # one output line less, nothing else moved


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_shell_runs_in_order_waits_for_ports_and_stops_what_it_started(tmp_path):
    """Real commands in the runner's bash: state carries over, `kill %1` works, a background server is
    waited for, failures are reported with their exit code, and nothing it started outlives it."""
    port = _free_port()
    readme = tmp_path / "README.md"
    readme.write_text(f"""## 1. Shell
```text
$ export GREETING=hello && mkdir sub && cd sub
$ echo "$GREETING from $(basename $PWD)" && cd ..
hello from sub
$ sleep 987 &
$ python teacher.py --port {port} &
$ curl -s localhost:{port}/v1/models | python -c 'import json, sys; print([m["id"] for m in json.load(sys.stdin)["data"]])'
['gpt-4o-mini', 'gpt-4o']
$ kill %2; wait %2; echo stopped
stopped
$ python3 -c 'import socket; print(socket.socket().connect_ex(("127.0.0.1", {port})) != 0)'
True
$ echo changed
unchanged
$ (exit 3)
```
""")
    out = tmp_path / "results.json"
    # run.py in its own process, as a user runs it (it makes itself the subreaper of what it starts)
    proc = subprocess.run([sys.executable, str(RUN), "--readme", str(readme), "--json", str(out), "--timeout", "30",
                           "--port-timeout", "30"], capture_output=True, text=True, timeout=120)
    results = json.loads(out.read_text())
    # `kill %2` stops the server itself (not a subshell around it): its port is closed once `wait` returns
    assert [r["status"] for r in results] == ["ok", "ok", "started", "started", "ok", "ok", "ok", "differs", "failed"], proc.stdout
    assert results[-1]["exit_code"] == 3 and results[-2]["diff"] and "[differs]" in proc.stdout
    assert proc.returncode == 2  # a command failed
    assert not _processes_with("sleep\0" + "987"), "the background sleep outlived run.py"


def _processes_with(cmdline: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").startswith(cmdline):
                    found.append(int(entry))
            except OSError:
                pass
    return found


# The walkthrough runs on the README's default store (DuckDB): its PostgreSQL commands are in the
# unnumbered Configuration section, which the runner does not run (they name a server of their own).
@pytest.mark.skipif(os.environ.get("PROTEGE_WALKTHROUGH") != "1", reason="minutes long: set PROTEGE_WALKTHROUGH=1 to run the README walkthrough")
def test_the_readme_walkthrough_runs_as_written(tmp_path):
    out = tmp_path / "results.json"
    args = ["--json", str(out)]
    if os.environ.get("PROTEGE_WALKTHROUGH_SECTIONS"):
        args += ["--sections", os.environ["PROTEGE_WALKTHROUGH_SECTIONS"]]
    subprocess.run([sys.executable, str(RUN), *args], check=False)
    results = json.loads(out.read_text())
    failed = [f"§{r['section']} line {r['line']}: $ {r['command']} (exit {r['exit_code']}) {r['note']}" for r in results if r["status"] == "failed"]
    assert results and not failed, "\n".join(failed)


def _run_readme(tmp_path, text: str, *args: str) -> tuple[list[dict], subprocess.CompletedProcess]:
    readme = tmp_path / "README.md"
    readme.write_text(text)
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(RUN), "--readme", str(readme), "--json", str(out), *args],
                          capture_output=True, text=True, timeout=120)
    return json.loads(out.read_text()), proc


def test_a_command_that_does_not_end_fails_and_ends_the_run(tmp_path):
    results, proc = _run_readme(tmp_path, "## 1. Slow\n```text\n$ sleep 60\n$ echo after\nafter\n```\n", "--timeout", "2")
    assert [r["status"] for r in results] == ["failed", "not run"] and proc.returncode == 2
    assert "no exit after 2 s" in results[0]["note"]


def test_a_server_port_already_in_use_fails_instead_of_talking_to_the_old_server(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        results, proc = _run_readme(tmp_path, f"## 1. Serve\n```text\n$ python teacher.py --port {port} &\n"
                                              f"$ curl -s localhost:{port}/v1/models\n```\n")
    assert [r["status"] for r in results] == ["failed", "not run"] and proc.returncode == 2
    assert "already in use" in results[0]["note"]


def test_a_file_block_is_written_and_kept_by_update():
    """``<!-- walkthrough: file NAME -->`` before a block: the walkthrough writes the block to NAME
    (the reader's "save this as policies.toml"), and --update leaves the block as written."""
    text = "\n".join([
        "## 6. Auto", "<!-- walkthrough: file policies.toml -->", "<!-- another marker -->", "```toml",
        "[[policy]]", 'name = "topics"', "```", "", "```text", "$ cat policies.toml", "[[policy]]", 'name = "topics"', "```",
    ])
    steps = run.parse(text)
    assert [s.writes for s in steps] == ["policies.toml", None]
    assert steps[0].command.splitlines()[1:3] == ["[[policy]]", 'name = "topics"'] and steps[0].shown == []
    results = [run.Result(steps[0], "ok", steps[0].command), run.Result(steps[1], "ok", "cat policies.toml", ["[[policy]]", 'name = "topics"'])]
    assert run.updated(text, results) == text


def test_a_block_marked_not_run_is_not_part_of_the_walkthrough():
    text = "\n".join(["## 2. Look", "<!-- walkthrough: not run (another setup) -->", "```text", "$ protege stats", "error: key", "```",
                      "```text", "$ echo hi", "hi", "```"])
    assert [s.command for s in run.parse(text)] == ["echo hi"]
