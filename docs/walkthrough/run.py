"""Run the README's walkthrough as written and compare what each command prints with what it shows.

The walkthrough is every ```` ```text ```` block of README.md that has lines starting with ``$ ``:
each such line is a shell command (a line ending in ``\\`` continues on the next), and the lines
after it, up to the next ``$ `` line or the end of the block, are the output the README shows for
it; a command also goes on while a quote is open (a JSON body over several lines) and up to the
end of a heredoc (``cat > policies.toml <<'EOF'``). A block right after
``<!-- walkthrough: file NAME -->`` is a file the reader writes (``policies.toml``): the
walkthrough writes it, as shown, before the commands after it; a block right after
``<!-- walkthrough: not run ... -->`` is real output of another setup (a server with keys) and is
not run. ```` ```bash ```` blocks are illustrations and
are not run, and so are ``text`` blocks with no ``$ `` line and blocks outside the numbered
sections. Commands run in order, in one bash (so ``cd``, ``export`` and ``kill %1`` work as in a
terminal), in a new temporary directory that holds a copy of this folder's ``teacher.py``,
``app.py`` and ``corpus.py``; ``protege`` and ``python`` are this interpreter's (run it from the
virtual environment Protege is installed in), and ``PROTEGE_*`` variables are not passed on.

    python docs/walkthrough/run.py                  # sections 1 to 6; --sections 1-5 for fewer
    python docs/walkthrough/run.py --update         # and rewrite README.md's shown output

A command ending in ``&`` runs in the background (its output goes to a log, and nothing is shown
for it); when it names ``--port N``, the next command waits until 127.0.0.1:N accepts connections,
as a person would wait for the server's start-up line. Every process the walkthrough started is
stopped at the end, also when a command fails or this script is interrupted.

A command is **ok** when its output equals the shown output once both are normalised, **differs**
(with a diff) when not, **failed** when it exits non-zero or times out. Normalising replaces only
what legitimately changes from run to run (``NORMALISERS``): ids, hex digests, Unix times, dates,
durations, the working directory (shown as ``/tmp/walk``), and runs of spaces (table columns widen
with the values). Ids and Unix times in a command that the README took from an earlier output
(``finetune events ftjob_...``, ``"since": 1795...``) are replaced by the ones this run printed at
the same place, so the walkthrough runs on its own ids; ``--update`` writes those too.

A command that does not end within ``--timeout`` fails and ends the run (the shell is still busy
with it). Exit status: 0 when every command is ok, 1 when some differ, 2 when one failed.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FILES = ("teacher.py", "app.py", "corpus.py")  # what the walkthrough's commands run
SHOWN_WORKDIR = "/tmp/walk"  # how the README shows the temporary working directory

# What legitimately changes from one run to the next: (name, pattern, placeholder). Order matters
# (a completion id holds hex-looking runs; a date holds digits). Patterns whose name is in
# MAPPED are values a later command may quote: they are mapped from the README's to this run's.
NORMALISERS: list[tuple[str, re.Pattern[str], str]] = [
    ("completion id", re.compile(r"\bchatcmpl-[0-9A-Za-z]{20,}"), "chatcmpl-<id>"),
    ("prefixed id", re.compile(r"\b[a-z]+_[0-9a-f]{16,}\b"), "<id>"),
    ("hex digest", re.compile(r"\b[0-9a-f]{16,64}\b"), "<hex>"),
    ("date and time", re.compile(r"(?<![\w-])\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b"), "<date>"),
    ("unix time", re.compile(r"\b1[6-9]\d{8}\b"), "<time>"),
    ("duration", re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|s)\b"), "<duration>"),
    ("seconds field", re.compile(r"(\w*seconds)=\d+(?:\.\d+)?"), r"\1=<duration>"),
]
MAPPED = ("completion id", "prefixed id", "hex digest", "unix time")
_SPACES = re.compile(r"[ \t]+")
_BACKGROUND = re.compile(r"(?<![&|])&\s*(?:#.*)?$")
_PORT = re.compile(r"--port[ =](\d+)")


@dataclass
class Step:
    """One ``$ `` command of the README and the output shown under it."""

    section: int | None
    start: int  # index in the README's lines of the ``$ `` line
    end: int  # index after the last shown output line
    command: str  # without the ``$ ``; continuation lines joined with newlines
    shown: list[str]
    command_lines: int = 1
    writes: str | None = None  # a file block (``<!-- walkthrough: file NAME -->``), never rewritten by --update

    @property
    def background(self) -> bool:
        return bool(_BACKGROUND.search(self.command.splitlines()[-1]))


@dataclass
class Result:
    step: Step
    status: str  # ok | differs | failed | started | not run (after a command that did not end)
    command: str  # as run (ids mapped)
    output: list[str] = field(default_factory=list)
    exit_code: int | None = None
    diff: list[str] = field(default_factory=list)
    note: str = ""


# -- parsing -------------------------------------------------------------------------------------

_HEADING = re.compile(r"^##\s+(\d+)\.\s")
_FILE = re.compile(r"^<!-- walkthrough: file (\S+) -->$")
_NOT_RUN = re.compile(r"^<!-- walkthrough: not run\b.*-->$")
_HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")


def parse(text: str) -> list[Step]:
    """The walkthrough's steps: ``$ `` lines in ```` ```text ```` blocks, with the output shown under each."""
    lines = text.split("\n")
    steps: list[Step] = []
    section: int | None = None
    write_to: str | None = None  # set by `<!-- walkthrough: file NAME -->`: the next block is that file
    skip = False  # set by `<!-- walkthrough: not run ... -->`: the next block is an example of another setup
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            m = _HEADING.match(line)
            section = int(m.group(1)) if m else None
        if (f := _FILE.match(line.strip())) is not None:
            write_to = f.group(1)
        if _NOT_RUN.match(line.strip()):
            skip = True
        fence = line.strip()
        if fence.startswith("```"):
            lang = fence[3:].strip()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            if skip:
                skip = False
            elif write_to is not None:  # the user writes this file (shown as a block): a step that writes it
                body = "\n".join(lines[i + 1 : j])
                steps.append(Step(section, i, j + 1, f"cat > {write_to} <<'WALKTHROUGH_EOF'\n{body}\nWALKTHROUGH_EOF", [],
                                  command_lines=j + 1 - i, writes=write_to))
                write_to = None
            elif lang == "text":
                steps += _block_steps(lines, i + 1, j, section)
            i = j + 1
            continue
        i += 1
    return steps


def _block_steps(lines: list[str], start: int, end: int, section: int | None) -> list[Step]:
    steps: list[Step] = []
    k = start
    while k < end:
        if not lines[k].startswith("$ "):
            k += 1
            continue
        first = k
        command = [lines[k][2:]]
        while (command[-1].endswith("\\") or _open_quote("\n".join(command))) and k + 1 < end:
            k += 1
            command.append(lines[k])
        heredoc = _HEREDOC.search(command[-1])
        if heredoc:  # `cat > policies.toml <<'EOF'`: the lines up to the delimiter are the command's input
            while k + 1 < end:
                k += 1
                command.append(lines[k])
                if lines[k].strip() == heredoc.group(1):
                    break
        k += 1
        out_start = k
        while k < end and not lines[k].startswith("$ "):
            k += 1
        steps.append(Step(section, first, k, "\n".join(command), lines[out_start:k], command_lines=out_start - first))
    return steps


def _open_quote(text: str) -> bool:
    """Whether ``text`` ends inside a shell quote (a ``-d '{...}'`` body that spans lines continues the command)."""
    quote, i = "", 0
    while i < len(text):
        c = text[i]
        if quote == "'":
            quote = "" if c == "'" else quote
        elif c == "\\":
            i += 1
        elif quote == '"':
            quote = "" if c == '"' else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or text[i - 1] in " \t\n"):
            while i < len(text) and text[i] != "\n":  # a comment: its quotes do not count
                i += 1
        i += 1
    return bool(quote)


def select(steps: list[Step], sections: set[int] | None) -> list[Step]:
    return [s for s in steps if s.section is not None and (sections is None or s.section in sections)]


def parse_sections(spec: str) -> set[int]:
    """``"1-5"``, ``"1,3,6"`` -> a set of section numbers."""
    out: set[int] = set()
    for part in spec.split(","):
        a, _, b = part.strip().partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


# -- normalising and mapping -----------------------------------------------------------------------

def normalise(lines: list[str], workdir: str | None = None) -> list[str]:
    """What is compared: each line with ids, times and durations replaced and spaces squeezed."""
    out = []
    for line in lines:
        if workdir:
            line = line.replace(workdir, SHOWN_WORKDIR)
        for _name, pattern, placeholder in NORMALISERS:
            line = pattern.sub(placeholder, line)
        out.append(_SPACES.sub(" ", line).strip())
    while out and not out[-1]:
        out.pop()
    return out


def mapped_values(lines: list[str]) -> dict[str, list[str]]:
    """The values a later command may quote, by kind, in order of appearance (each once)."""
    text = "\n".join(lines)
    found: dict[str, list[str]] = {}
    taken: list[tuple[int, int]] = []
    for name, pattern, _ in NORMALISERS:
        if name not in MAPPED:
            continue
        for m in pattern.finditer(text):
            if any(a < m.end() and m.start() < b for a, b in taken):
                continue  # inside a value an earlier pattern took (hex inside an id)
            taken.append(m.span())
            seen = found.setdefault(name, [])
            if m.group(0) not in seen:
                seen.append(m.group(0))
    return found


def learn(mapping: dict[str, str], shown: list[str], real: list[str]) -> None:
    """Pair the README's ids (and times) with this run's, kind by kind, where their counts agree.

    A value shown twice means what its latest output printed: a command quotes the output just
    above it (two Unix times in the README that happen to be equal are two different times here).
    """
    a, b = mapped_values(shown), mapped_values(real)
    for kind, values in a.items():
        if len(values) == len(b.get(kind, [])):
            for old, new in zip(values, b[kind]):
                mapping[old] = new


def substitute(command: str, mapping: dict[str, str]) -> str:
    for old in sorted(mapping, key=len, reverse=True):
        command = re.sub(rf"(?<![0-9A-Za-z]){re.escape(old)}(?![0-9A-Za-z])", mapping[old], command)
    return command


# -- running ---------------------------------------------------------------------------------------

class Shell:
    """One bash fed the commands one at a time; it and all it started are stopped at the end.

    Job specs (``kill %2``) work without job control, and without it bash prints no job notices
    ("[2]+ Terminated ...") into the next command's output.
    """

    def __init__(self, workdir: Path, ctl: Path, env: dict[str, str]) -> None:
        self.ctl = ctl
        self.n = 0
        self.log = open(ctl / "bash.log", "wb")
        self.before = set(_descendants(os.getpid()))  # not ours to stop (when imported by a program with children)
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT,
            cwd=workdir, env=env, start_new_session=True,
        )

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def run(self, command: str, background: bool, timeout: float) -> tuple[int | None, str]:
        """Run one command; (exit code, output). None for a timeout or a shell that died."""
        self.n += 1
        out, rc = self.ctl / f"{self.n}.out", self.ctl / f"{self.n}.rc"
        if background:
            body = _BACKGROUND.sub("", command.rstrip())
            # Not in a { } group: bash would fork a subshell for it, and `kill %2` would stop that
            # subshell while the server it started keeps the database.
            self._send(f"{body} < /dev/null > '{out}' 2>&1 &\necho 0 > '{rc}.tmp'; mv '{rc}.tmp' '{rc}'\n")
        else:
            self._send(f"{{ {command}\n}} < /dev/null > '{out}' 2>&1; echo $? > '{rc}.tmp'; mv '{rc}.tmp' '{rc}'\n")
        deadline = time.monotonic() + timeout
        while not rc.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return None, _read(out)
            time.sleep(0.05)
        return int(rc.read_text().strip() or 1), _read(out)

    def output_of(self, n: int) -> str:
        return _read(self.ctl / f"{n}.out")

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every process the walkthrough started (servers drain), then SIGKILL what is left."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        pids = self._started()
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(OSError):  # without job control every job is in bash's process group (and
            os.killpg(self.proc.pid, signal.SIGTERM)  # without /proc that is all we can find)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            self._reap(pids)
            time.sleep(0.1)
        for pid in self._started():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._reap(pids)
        self.log.close()


    def _started(self) -> list[int]:
        return [p for p in _descendants(os.getpid()) if p not in self.before]

    def _reap(self, pids: list[int]) -> None:
        """Collect the exit of processes re-parented to us (bash itself is Popen's to wait for)."""
        for pid in pids:
            if pid != self.proc.pid:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    if not os.path.isdir("/proc"):
        return kids
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` (this process is their subreaper, so orphans stay below it)."""
    kids, out, todo = _children_map(), [], [root]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _become_subreaper() -> None:
    """Processes whose parent exits (a daemonised server, a training process) re-parent to us, not init."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_port(port: int, shell: Shell, n: int, timeout: float) -> str | None:
    """None once 127.0.0.1:port accepts connections; else why not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _listening(port):
            return None
        if shell.proc.poll() is not None:
            return "the shell exited"
        time.sleep(0.2)
    return f"nothing listened on 127.0.0.1:{port} after {timeout:.0f} s"


def environment() -> dict[str, str]:
    """This interpreter's bin first on PATH; no PROTEGE_* settings from the caller's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTEGE_") and k not in ("COLUMNS", "LINES")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_steps(steps: list[Step], *, timeout: float, port_timeout: float, keep: bool = False,
              echo=print) -> tuple[list[Result], Path]:
    workdir = Path(tempfile.mkdtemp(prefix="protege-walk-"))
    ctl = Path(tempfile.mkdtemp(prefix="protege-walk-ctl-"))
    for name in FILES:
        shutil.copy2(HERE / name, workdir / name)
    _become_subreaper()
    shell = Shell(workdir, ctl, environment())
    mapping: dict[str, str] = {SHOWN_WORKDIR: str(workdir)}
    results: list[Result] = []
    try:
        for index, step in enumerate(steps):
            command = substitute(step.command, mapping)
            port = _PORT.search(command) if step.background else None
            if port and _listening(int(port.group(1))):
                # the new server would fail to bind while the next commands talk to the old one
                results.append(Result(step, "failed", command, note=f"127.0.0.1:{port.group(1)} is already in use "
                                      "(a server left from an earlier run?)"))
                echo(report_line(results[-1]))
                results += [Result(s, "not run", s.command) for s in steps[index + 1:]]
                break
            started = time.monotonic()
            code, raw = shell.run(command, step.background, timeout)
            output = raw.replace(str(workdir), SHOWN_WORKDIR).rstrip("\n").split("\n") if raw else []
            output = [line.rstrip() for line in output]
            took = time.monotonic() - started
            if step.background:
                why = _wait_port(int(port.group(1)), shell, shell.n, port_timeout) if port and code == 0 else None
                status = "failed" if code != 0 or why else "started"
                result = Result(step, status, command, exit_code=code, note=why or "")
                if why:
                    result.output = shell.output_of(shell.n).rstrip("\n").split("\n")[-20:]
            elif code is None:
                result = Result(step, "failed", command, output, note=f"no exit after {timeout:.0f} s (or the shell died)")
            elif code != 0:
                result = Result(step, "failed", command, output, exit_code=code)
            else:
                learn(mapping, step.shown, output)
                want, got = normalise(step.shown), normalise(output)
                diff = [] if want == got else list(difflib.unified_diff(want, got, "README (normalised)", "this run (normalised)", lineterm=""))
                result = Result(step, "ok" if not diff else "differs", command, output, exit_code=0, diff=diff)
            result.command = command.replace(str(workdir), SHOWN_WORKDIR)
            results.append(result)
            echo(report_line(result, took))
            if code is None:  # the shell is still busy with it: what follows would queue behind it
                results += [Result(s, "not run", s.command) for s in steps[index + 1:]]
                break
    finally:
        shell.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(ctl, ignore_errors=True)
    return results, workdir


def report_line(r: Result, took: float | None = None) -> str:
    head = r.step.command.splitlines()[0]
    where = f"§{r.step.section} line {r.step.start + 1}"
    text = f"[{r.status}] {where}: $ {head}" + (f"  ({took:.1f} s)" if took is not None else "")
    if r.status == "failed":
        text += f"\n    exit code {r.exit_code}" + (f": {r.note}" if r.note else "")
        text += "".join(f"\n    | {line}" for line in r.output[-20:])
    elif r.status == "differs":
        text += "".join(f"\n    {line}" for line in r.diff)
    return text


# -- rewriting the README ------------------------------------------------------------------------

def updated(text: str, results: list[Result]) -> str:
    """README text with each command's ids and shown output replaced by this run's (failed ones keep their output)."""
    lines = text.split("\n")
    for r in sorted(results, key=lambda r: r.step.start, reverse=True):
        step = r.step
        if step.writes is not None:  # the README's file block stays as written
            continue
        command = r.command
        new = ["$ " + command.split("\n")[0], *command.split("\n")[1:]]
        if r.status in ("ok", "differs"):
            trailing = len(step.shown) - len(_strip_trailing_blank(step.shown))
            new += r.output + [""] * trailing
        else:
            new += step.shown
        lines[step.start:step.end] = new
    return "\n".join(lines)


def _strip_trailing_blank(lines: list[str]) -> list[str]:
    out = list(lines)
    while out and not out[-1].strip():
        out.pop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", default=str(REPO / "README.md"))
    parser.add_argument("--sections", help="e.g. 1-5 or 1,2,6 (default: every numbered section)")
    parser.add_argument("--update", action="store_true", help="rewrite README.md's shown output with this run's")
    parser.add_argument("--list", action="store_true", help="print the commands and exit")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one command may take (default 1800)")
    parser.add_argument("--port-timeout", type=float, default=60, help="seconds a background server gets to listen")
    parser.add_argument("--keep", action="store_true", help="keep the temporary working directory")
    parser.add_argument("--json", dest="json_out", help="also write the results to this file")
    args = parser.parse_args(argv)

    readme = Path(args.readme)
    text = readme.read_text(encoding="utf-8")
    steps = select(parse(text), parse_sections(args.sections) if args.sections else None)
    if not steps:
        print(f"error: no walkthrough commands in {readme}", file=sys.stderr)
        return 2
    if args.list:
        for s in steps:
            print(f"§{s.section} line {s.start + 1}{' (background)' if s.background else ''}: $ {s.command}")
        return 0

    def _terminate(signum, frame):  # noqa: ANN001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        results, workdir = run_steps(steps, timeout=args.timeout, port_timeout=args.port_timeout, keep=args.keep)
    except KeyboardInterrupt:
        print("interrupted: every process the walkthrough started was stopped", file=sys.stderr)
        return 130
    counts = {k: sum(r.status == k for r in results) for k in ("ok", "differs", "failed", "started", "not run")}
    print(f"{len(results)} commands: {counts['ok']} ok, {counts['differs']} differ, {counts['failed']} failed, "
          f"{counts['started']} started in the background" + (f", {counts['not run']} not run" if counts["not run"] else "")
          + (f"; kept {workdir}" if args.keep else ""))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps([
            {"section": r.step.section, "line": r.step.start + 1, "command": r.command, "status": r.status,
             "exit_code": r.exit_code, "note": r.note, "diff": r.diff, "output": r.output} for r in results
        ], indent=1))
    if args.update:
        readme.write_text(updated(text, results), encoding="utf-8")
        print(f"updated {readme}")
    return 2 if counts["failed"] else 1 if counts["differs"] else 0


if __name__ == "__main__":
    sys.exit(main())
