"""The console's HTTP routes under ``/ui`` (mounted by protege/app.py on the proxy's port).

Reads are sync ``def`` routes, so FastAPI runs them (and every store call in them) in its threadpool,
off the proxy's event loop. Form posts are ``async`` only to read the body, and hand the store work to
the threadpool. Every page works without script (links and forms); htmx, vendored under static/,
swaps fragments in place where it is loaded: filtering traffic, loading older rows, editing
metadata, adding feedback. Errors in forms come back as a message on the page, never a stack trace.
"""

from __future__ import annotations

import calendar
import functools
import logging
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from protege.store import Store
from protege.store import traffic as store_traffic

from . import data, session

log = logging.getLogger("protege.console")

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(prefix="/ui", include_in_schema=False)

PAGE_SIZE = 50
OUTCOMES = ("ok", "upstream_error", "unreachable", "timeout", "client_disconnected")


def _ts(value: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(value))) + " UTC"
    except (TypeError, ValueError):
        return "—"


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _usd(value: Any) -> str:
    if value is None:
        return "—"
    sign, v = ("-" if value < 0 else ""), abs(value)
    return f"{sign}${v:,.2f}" if v >= 1 else f"{sign}${v:.6f}"


templates.env.filters.update(ts=_ts, num=_num, usd=_usd, json=lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2).decode())


def _store(request: Request) -> Store:
    store = getattr(request.app.state, "protege_store", None)
    if store is None:  # pragma: no cover - protege.app always sets it
        raise RuntimeError("the app has no store (app.state.protege_store)")
    return store


def _page(request: Request, template: str, status: int = 200, **ctx: Any) -> Response:
    if not session.signed_in(request):
        return _to_login(request)
    ctx.setdefault("nav", template.split(".")[0].split("_")[0])
    ctx["login_enabled"] = bool(session.admin_keys(request))
    return templates.TemplateResponse(request, template, ctx, status_code=status)


def _signed_in(page: Callable[..., Response]) -> Callable[..., Response]:
    """A page only a signed-in user sees: anyone else is sent to the login page before the page
    looks anything up (so a missing id says nothing to a stranger)."""

    @functools.wraps(page)
    def signed_in_page(request: Request, *args: Any, **kwargs: Any) -> Response:
        if not session.signed_in(request):
            return _to_login(request)
        return page(request, *args, **kwargs)

    return signed_in_page


def _to_login(request: Request) -> Response:
    if request.headers.get("hx-request"):
        return Response(status_code=401, headers={"HX-Redirect": "/ui/login"})
    nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/ui/login?" + urlencode({"next": nxt}), status_code=303)


def _not_found(request: Request, what: str) -> Response:
    return _page(request, "message.html", 404, title="Not found", message=f"{what} was not found.", nav="")


def _page_of(request: Request, what: str, template: str, key: str, found: Any, **ctx: Any) -> Response:
    """The page of one object, given to the template as ``key``; the 404 page naming ``what`` when it
    was not ``found`` (None)."""
    if found is None:
        return _not_found(request, what)
    return _page(request, template, **{key: found}, **ctx)


async def _form(request: Request) -> dict[str, list[str]]:
    raw = await request.body()
    return parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)


def _one(form: dict[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[0].strip()


async def _guard(request: Request) -> Response | None:
    """Sign-in and same-origin checks for form posts."""
    if not session.signed_in(request):
        return _to_login(request)
    if not session.same_origin(request):
        return _page(request, "message.html", 403, title="Refused", message="This form was posted from another site.", nav="")
    return None


# -- static and login ---------------------------------------------------------------------------


@router.get("/static/{name}")
def static(name: str) -> Response:
    path = STATIC / name
    if "/" in name or name.startswith(".") or not path.is_file():
        return Response("not found", status_code=404, media_type="text/plain")
    media = {"js": "text/javascript", "css": "text/css"}.get(path.suffix.lstrip("."), "text/plain")
    return FileResponse(path, media_type=media, headers={"cache-control": "public, max-age=3600"})


def _safe_next(value: str | None) -> str:
    return value if value and value.startswith("/ui") and not value.startswith("//") else "/ui/"


@router.get("/login")
def login_form(request: Request, next: str | None = None) -> Response:
    return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next), "error": None, "nav": "", "login_enabled": True})


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    nxt = _safe_next(_one(form, "next"))
    if not session.same_origin(request):
        return templates.TemplateResponse(request, "login.html", {"next": nxt, "error": "Refused: posted from another site.", "nav": "", "login_enabled": True}, status_code=403)
    if not session.admin_keys(request):
        return RedirectResponse(nxt, status_code=303)
    token = session.session_token(request, _one(form, "key"))
    if token is None:
        return templates.TemplateResponse(request, "login.html", {"next": nxt, "error": "That is not an admin key of this server.", "nav": "", "login_enabled": True}, status_code=401)
    resp = RedirectResponse(nxt, status_code=303)
    resp.set_cookie(session.COOKIE, token, path="/ui", httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return resp


@router.post("/logout")
async def logout(request: Request) -> Response:
    resp = RedirectResponse("/ui/login", status_code=303)
    resp.delete_cookie(session.COOKIE, path="/ui")
    return resp


# -- overview -----------------------------------------------------------------------------------


@router.get("")
@router.get("/")
@_signed_in
def overview(request: Request, window: str = "1h") -> Response:
    return _page(request, "overview.html", ov=data.overview(_store(request), window), windows=list(data.WINDOWS), nav="overview")


# -- traffic ------------------------------------------------------------------------------------


def _utc(value: str) -> float | None:
    """``YYYY-MM-DDTHH:MM`` (a datetime-local input, read as UTC) or Unix seconds."""
    value = value.strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    for fmt in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(value, fmt)))
        except ValueError:
            continue
    raise ValueError(f"not a time: {value!r} (use YYYY-MM-DDTHH:MM, UTC)")


def _traffic_query(request: Request) -> tuple[store_traffic.TrafficFilter, dict[str, str], str | None]:
    q = request.query_params
    form = {k: q.get(k, "").strip() for k in ("model", "meta_key", "meta_value", "since", "until", "outcome", "served_by")}
    problem = None
    md = {form["meta_key"]: form["meta_value"]} if form["meta_key"] else None
    try:
        since, until = _utc(form["since"]), _utc(form["until"])
    except ValueError as exc:
        since = until = None
        problem = str(exc)
    outcome = form["outcome"] if form["outcome"] in OUTCOMES else None
    served = form["served_by"] if form["served_by"] in ("teacher", "student") else None
    flt = store_traffic.TrafficFilter(model=form["model"] or None, metadata=md, since=since, until=until, outcome=outcome, served_by=served)  # type: ignore[arg-type]
    return flt, form, problem


_models_cache: dict[int, tuple[float, list[str]]] = {}


def _models(store: Store, ttl: float = 60.0) -> list[str]:
    """The model filter's suggestions: a GROUP BY over every capture, so kept for a minute."""
    hit = _models_cache.get(id(store))
    if hit is not None and time.monotonic() - hit[0] < ttl:
        return hit[1]
    models = store_traffic.traffic_models(store)
    _models_cache[id(store)] = (time.monotonic(), models)
    return models


@router.get("/traffic")
@_signed_in
def traffic(request: Request, before: int | None = None) -> Response:
    flt, form, problem = _traffic_query(request)
    store = _store(request)
    t0 = time.perf_counter()
    page = store_traffic.traffic_page(store, flt, before=before, limit=PAGE_SIZE)
    ms = (time.perf_counter() - t0) * 1000
    params = {k: v for k, v in form.items() if v}
    more_url = "/ui/traffic?" + urlencode({**params, "before": page.next_before}) if page.next_before is not None else None
    ctx = {"page": page, "form": form, "problem": problem, "more_url": more_url, "query_ms": ms, "outcomes": OUTCOMES, "nav": "traffic"}
    target = request.headers.get("hx-target")
    if request.headers.get("hx-request") and target in ("traffic-results", "more-row"):
        name = "traffic_rows.html" if target == "more-row" else "traffic_results.html"
        return templates.TemplateResponse(request, name, ctx)
    return _page(request, "traffic.html", models=_models(store), **ctx)


@router.get("/traffic/{completion_id}")
@_signed_in
def capture(request: Request, completion_id: str) -> Response:
    return _page_of(request, f"Capture {completion_id}", "capture.html", "cap", data.capture(_store(request), completion_id),
                    nav="traffic", saved=request.query_params.get("saved"))


def _metadata_from(form: dict[str, list[str]]) -> dict[str, str]:
    keys, values = form.get("key", []), form.get("value", [])
    md: dict[str, str] = {}
    for k, v in zip(keys, values):
        if k.strip():
            md[k.strip()] = v
    return md


@router.post("/traffic/{completion_id}/metadata")
async def edit_metadata(request: Request, completion_id: str) -> Response:
    if (denied := await _guard(request)) is not None:
        return denied
    from protege.store import update_metadata

    md = _metadata_from(await _form(request))
    error = None
    if len(md) > 16:
        error = "Metadata holds at most 16 pairs (as OpenAI's)."
    elif any(len(k) > 64 or len(v) > 512 for k, v in md.items()):
        error = "Keys are at most 64 characters and values at most 512 (as OpenAI's)."
    store = _store(request)
    if error is None:
        # The Stored API's update: only captures the Stored API returns (outcome ok) have editable metadata.
        updated = await run_in_threadpool(update_metadata, store, completion_id, md)
        if updated is None:
            error = "Only successful captures have editable metadata."
    return await _capture_edited(request, store, completion_id, "metadata", error)


_EDITED = {"metadata": ("capture_metadata.html", "md"), "feedback": ("capture_feedback.html", "fb")}


async def _capture_edited(request: Request, store: Any, completion_id: str, part: str, error: str | None) -> Response:
    """After an edit of a capture's metadata or feedback: the re-rendered part (htmx), the page
    with the error (400), or a redirect back to the capture (a plain form post)."""
    template, prefix = _EDITED[part]
    cap = await run_in_threadpool(data.capture, store, completion_id)
    if cap is None:
        return _not_found(request, f"Capture {completion_id}")
    if request.headers.get("hx-request"):
        return templates.TemplateResponse(request, template, {"cap": cap, f"{prefix}_error": error, f"{prefix}_saved": error is None})
    if error:
        return _page(request, "capture.html", 400, cap=cap, nav="traffic", **{f"{prefix}_error": error})
    return RedirectResponse(f"/ui/traffic/{completion_id}?saved={part}", status_code=303)


@router.post("/traffic/{completion_id}/feedback")
async def add_feedback(request: Request, completion_id: str) -> Response:
    if (denied := await _guard(request)) is not None:
        return denied
    from protege.store.feedback import add_feedback as store_add

    form = await _form(request)
    error = None
    score: float | None = None
    if _one(form, "score"):
        try:
            score = float(_one(form, "score"))
        except ValueError:
            error = "Score must be a number."
    accepted = {"yes": True, "no": False}.get(_one(form, "accepted"))
    fields = {"label": _one(form, "label") or None, "correction": (form.get("correction") or [""])[0] or None,
              "comment": _one(form, "comment") or None}
    if error is None and score is None and accepted is None and not any(fields.values()):
        error = "Add at least one of score, label, correction, comment or accepted."
    store = _store(request)
    if error is None:
        fb = await run_in_threadpool(lambda: store_add(store, completion_id, score=score, accepted=accepted, source="console", **fields))
        if fb is None:
            return _not_found(request, f"Capture {completion_id}")
    return await _capture_edited(request, store, completion_id, "feedback", error)


# -- datasets -----------------------------------------------------------------------------------


@router.get("/datasets")
@_signed_in
def datasets(request: Request, name: str | None = None) -> Response:
    from protege.distill.datasets.builder import list_datasets

    items, _more = list_datasets(_store(request), name=name or None, limit=100)
    return _page(request, "datasets.html", datasets=[d.to_dict() for d in items], filter_name=name or "", nav="datasets")


@router.get("/datasets/{dataset_id}")
@_signed_in
def dataset(request: Request, dataset_id: str) -> Response:
    return _page_of(request, f"Dataset {dataset_id}", "dataset.html", "d", data.dataset_detail(_store(request), dataset_id), nav="datasets")


@router.get("/datasets/{dataset_id}/files/{which}")
@_signed_in
def dataset_download(request: Request, dataset_id: str, which: str) -> Response:
    found = data.dataset_file(_store(request), dataset_id, which)
    if found is None or not Path(found[0]).is_file():
        return _not_found(request, f"File {which} of dataset {dataset_id}")
    media = "text/markdown; charset=utf-8" if which == "card" else "application/x-ndjson"
    return FileResponse(found[0], media_type=media, filename=found[1])


@router.post("/datasets/{dataset_id}/rebuild")
async def dataset_rebuild(request: Request, dataset_id: str) -> Response:
    if (denied := await _guard(request)) is not None:
        return denied
    from protege.distill.datasets.builder import DatasetError

    try:
        new_id = await run_in_threadpool(data.rebuild_dataset, _store(request), dataset_id)
    except LookupError:
        return _not_found(request, f"Dataset {dataset_id}")
    except DatasetError as exc:
        return _page(request, "message.html", 400, title="Dataset not built", message=str(exc), nav="datasets")
    return RedirectResponse(f"/ui/datasets/{new_id}", status_code=303)


# -- fine-tunes ---------------------------------------------------------------------------------


@router.get("/finetunes")
@_signed_in
def finetunes(request: Request) -> Response:
    from protege.store import jobs as store_jobs

    jobs, _more = store_jobs.list_jobs(_store(request), limit=100)
    return _page(request, "finetunes.html", jobs=jobs, nav="finetunes")


@router.get("/finetunes/{job_id}")
@_signed_in
def finetune(request: Request, job_id: str) -> Response:
    return _page_of(request, f"Fine-tune job {job_id}", "finetune.html", "d", data.job_detail(_store(request), job_id),
                    nav="finetunes", saved=request.query_params.get("saved"))


@router.post("/finetunes/{job_id}/cancel")
async def finetune_cancel(request: Request, job_id: str) -> Response:
    if (denied := await _guard(request)) is not None:
        return denied
    from protege.distill.finetune.jobs import cancel_job
    from protege.distill.finetune.backends import FineTuneError

    settings = getattr(request.app.state, "protege_settings", None)
    try:
        await run_in_threadpool(cancel_job, _store(request), job_id, settings=settings)
    except FineTuneError as exc:
        return _page(request, "message.html", 409 if exc.status != 404 else 404, title="Not cancelled", message=exc.message, nav="finetunes")
    return RedirectResponse(f"/ui/finetunes/{job_id}?saved=cancelled", status_code=303)


# -- evals --------------------------------------------------------------------------------------


@router.get("/evals")
@_signed_in
def evals(request: Request) -> Response:
    from protege.evals.runs import run_object
    from protege.store import evals as store_evals

    store = _store(request)
    runs, _more = store_evals.list_runs(store, limit=100)
    return _page(request, "evals.html", runs=[run_object(store, r) for r in runs], nav="evals")


@router.get("/evals/compare")
@_signed_in
def evals_compare(request: Request, a: str = "", b: str = "") -> Response:
    store = _store(request)
    left, right = data.eval_summary(store, a), data.eval_summary(store, b)
    if left is None or right is None:
        return _not_found(request, f"Eval run {a if left is None else b}")
    return _page(request, "eval_compare.html", left=left, right=right, nav="evals")


@router.get("/evals/{run_id}")
@_signed_in
def eval_run(request: Request, run_id: str) -> Response:
    return _page_of(request, f"Eval run {run_id}", "eval.html", "s", data.eval_summary(_store(request), run_id), nav="evals")


@router.get("/evals/{run_id}/report")
@_signed_in
def eval_report(request: Request, run_id: str) -> Response:
    store = _store(request)
    if data.eval_summary(store, run_id) is None:
        return _not_found(request, f"Eval run {run_id}")
    try:
        html = data.eval_report(store, run_id)
    except (ValueError, KeyError) as exc:
        return HTMLResponse(f"<p>The report is not ready: {exc}</p>", status_code=409)
    # The report is the evals package's self-contained page, shown in a frame of this origin.
    return HTMLResponse(html, headers={"content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:"})


# -- students and rollouts ----------------------------------------------------------------------


@router.get("/students")
@_signed_in
def students(request: Request) -> Response:
    return _page(request, "students.html", policies=data.policies(_store(request)), nav="students")


@router.get("/students/{policy_id}")
@_signed_in
def student(request: Request, policy_id: str) -> Response:
    return _page_of(request, f"Policy {policy_id}", "student.html", "d", data.policy_detail(_store(request), policy_id),
                    nav="students", done=request.query_params.get("done"))


@router.get("/students/{policy_id}/{action}")
@_signed_in
def confirm_action(request: Request, policy_id: str, action: str, stage: str = "") -> Response:
    """The confirmation step: promote and roll back change who answers live traffic."""
    if action not in ("promote", "rollback"):
        return _not_found(request, f"Action {action}")
    return _page_of(request, f"Policy {policy_id}", "confirm.html", "d", data.policy_detail(_store(request), policy_id),
                    action=action, stage=stage, nav="students")


@router.post("/students/{policy_id}/{action}")
async def do_action(request: Request, policy_id: str, action: str) -> Response:
    if (denied := await _guard(request)) is not None:
        return denied
    from protege.distill.auto.rollout import AutoError

    if action not in ("promote", "rollback"):
        return _not_found(request, f"Action {action}")
    form = await _form(request)
    if _one(form, "confirm") != "yes":
        return RedirectResponse(f"/ui/students/{policy_id}/{action}", status_code=303)
    stage = _one(form, "stage")
    if stage and stage not in ("shadow", "canary", "full"):
        return _page(request, "message.html", 400, title="Not promoted", message=f"Unknown stage {stage!r}.", nav="students")
    store = _store(request)
    from protege.store import auto as store_auto

    if await run_in_threadpool(store_auto.get_policy, store, policy_id) is None:
        return _not_found(request, f"Policy {policy_id}")
    try:
        if action == "promote":
            route = await run_in_threadpool(data.promote, store, policy_id, stage or None)
        else:
            route = await run_in_threadpool(data.rollback, store, policy_id)
    except AutoError as exc:
        return _page(request, "message.html", 409, title="Nothing changed", message=str(exc), nav="students")
    log.info("console: %s of policy %s (route %s)", action, policy_id, route["id"])
    return RedirectResponse(f"/ui/students/{policy_id}?done={action}", status_code=303)


__all__ = ["router"]
