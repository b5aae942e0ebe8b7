"""Small Streamlit helpers shared by the pages (the only dashboard module besides pages and state using st)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from dashboard import format as fmt
from dashboard.forms import Check
from runs.registry import Registry, Run


def show_check(check: Check) -> None:
    """A form's errors (which block its Start button) and advice, one line each, inline."""
    for message in check.errors:
        st.error(message, icon=":material/block:")
    for message in check.advice:
        st.warning(message, icon=":material/warning:")


def status_line(run: Run) -> None:
    icon = fmt.STATUS_ICONS.get(run.status, "")
    text = f"{icon} **{run.name}** — {run.status} · started {fmt.when(run.started_at)} · {fmt.duration(run.duration_s)}"
    gates = fmt.gates_status(run)
    if gates:  # "completed" says the run ended, not that it passed
        text += f" · gates **{gates}**"
    if run.status == "failed":
        st.error(f"{run.name} failed: {run.error or 'no error recorded'}")
    elif run.status == "interrupted":
        st.warning(f"{run.name} was interrupted: {run.error or ''}")
    else:
        st.markdown(text)


NEXT_SUFFIX = ".next"


def show_next(key: str, run_id: str) -> None:
    """Make the picker ``key`` show ``run_id`` on the next rerun (safe after the widget exists)."""
    st.session_state[key + NEXT_SUFFIX] = run_id


RUN_PARAM = "run"  # ?run=ID in a page's URL selects that run in the page's picker that lists it
PAGES_DIR = Path(__file__).resolve().parent / "pages"


def _url_run() -> str | None:
    value = st.query_params.get(RUN_PARAM)
    return value or None


def _write_url(key: str, ids: Sequence[str]) -> None:
    """Put the picker's choice in the URL (shareable), unless the URL names a run another picker shows."""
    current = _url_run()
    if current is None or current in ids:
        chosen = st.session_state.get(key)
        if chosen and chosen != current:
            st.query_params[RUN_PARAM] = chosen


def run_picker(label: str, runs: Sequence[Run], key: str, help: str, *,
               names: Mapping[str, str] | None = None, write_url: bool = True) -> Run | None:
    """Selectbox over ``runs`` by id; keeps the user's choice across reruns while it exists.

    Which run it shows, first match wins: one the page just started (``show_next``), the URL's
    ``?run=ID`` when this picker lists it and did not take it already, the choice kept in the
    session, else the newest active run (what is running), else the newest. With ``write_url``
    the choice goes back into the URL, so the address bar can be shared.
    """
    if not runs:
        return None
    ids = [r.id for r in runs]
    by_id = {r.id: r for r in runs}
    nxt = st.session_state.pop(key + NEXT_SUFFIX, None)
    url_run = _url_run()
    taken = key + ".url"  # the URL id this picker last took: a later user choice is not overridden by it
    if nxt in by_id:
        st.session_state[key] = nxt
    elif url_run in by_id and st.session_state.get(taken) != url_run:
        st.session_state[key] = url_run
    st.session_state[taken] = url_run
    if st.session_state.get(key) not in by_id:
        st.session_state[key] = fmt.running_first(runs)[0].id
    chosen = st.selectbox(label, ids, key=key, help=help, format_func=lambda i: fmt.run_label(by_id[i], names))
    if write_url:
        _write_url(key, ids)
        st.session_state[taken] = _url_run()
    return by_id.get(chosen)


def hide_sub_runs(runs: Sequence[Run], key: str) -> list[Run]:
    """``runs`` without the runs sweeps made, unless the user asks for them (a toggle, shown only if any).

    A sub-run the URL names (``?run=ID``) stays, so a link to it opens it.
    """
    subs = [r for r in runs if fmt.is_sub_run(r)]
    if not subs:
        return list(runs)
    if st.toggle(f"Show sweep sub-runs ({len(subs)})", key=key,
                 help="runs a sweep made (its trainings, endpoints and load steps) are listed under their sweep "
                      "on the Runs page; switch this on to pick one here"):
        return list(runs)
    url_run = _url_run()
    return [r for r in runs if not fmt.is_sub_run(r) or r.id == url_run]


@dataclass(frozen=True)
class NextStep:
    """A button that opens another page (``page``: its file name) with a run selected there."""

    label: str
    page: str
    key: str
    icon: str
    help: str


def next_steps(steps: Sequence[NextStep], run_id: str, spare: int = 3) -> None:
    """The next-step buttons in one row (``spare``: width left empty after them, in button widths)."""
    for col, step in zip(st.columns([1] * len(steps) + [spare]), steps, strict=False):
        with col:
            if st.button(step.label, key=step.key, icon=step.icon, help=step.help):
                st.switch_page(PAGES_DIR / step.page, query_params={RUN_PARAM: run_id})


def live_fragment(registry: Registry, run_id: str, draw: Callable[[Run], None], refresh_s: float,
                  settled: Callable[[Run], bool] | None = None) -> None:
    """Draw an active run with ``draw(run)`` in a fragment re-run every ``refresh_s``, until it settles.

    Each tick re-reads the run (after reaping dead jobs); once it is no longer active
    (or ``settled(run)`` says the page should change, e.g. an endpoint became ready),
    the fragment reruns the whole app, so the page switches to its finished view and
    this timer goes away. A view drawn outside a fragment would stay as it was when
    the page ran (a sweep stuck on "starting:" after it had completed).
    """
    from runs.jobs import reap

    def tick() -> None:
        reap(registry)
        try:
            run = registry.get_run(run_id)
        except KeyError:  # deleted meanwhile (another tab)
            st.rerun(scope="app")
        if not run.active or (settled is not None and settled(run)):
            st.rerun(scope="app")
        draw(run)

    st.fragment(tick, run_every=refresh_s)()


def run_view(title: str, runs: Sequence[Run], key: str, help: str, empty_text: str,
             live: Callable[[Run], None], results: Callable[[Run], None], refresh_s: float,
             registry: Registry) -> Run | None:
    """A page's "Runs" block: a picker over ``runs``, then the chosen run live or finished; returns it.

    An active run is drawn by ``live(run)`` in :func:`live_fragment` (only it reruns, and it draws its own
    status line so that updates too); a finished one gets its status line and ``results(run)``.
    With no runs, ``empty_text`` says how to make one.
    """
    st.subheader("Runs")
    view = run_picker(title, runs, key=key, help=help)
    if view is None:
        st.info(empty_text)
    elif view.active:
        live_fragment(registry, view.id, live, refresh_s)
    else:
        status_line(view)
        results(view)
    return view


def stop_button(registry: Registry, run: Run, key: str, label: str = "Stop",
                stopper: Callable[[Registry, str], object] | None = None) -> None:
    """A Stop button for an active run (ends the job's whole process group)."""
    if st.button(label, key=key, type="secondary", icon=":material/stop:",
                 help="Ask the job to stop (it keeps partial results); its process group is killed after a grace "
                      "period"):
        from runs.jobs import stop_job

        with st.spinner(f"stopping {run.name}…"):
            (stopper or stop_job)(registry, run.id)
        st.rerun()


def ship_section(root: Path, write: Callable[[], object], *, key: str, what: str) -> None:
    """Write (on click) and show a TF Serving bundle folder: a zip download and its SERVE.md.

    ``write`` exports the SavedModel (it imports TensorFlow, so only on click); a
    bundle already in ``root`` is shown as is, and writing again adds a version.
    """
    from agent.tfserving import SERVE_MD_FILENAME, zip_bundle

    serve_md = root / SERVE_MD_FILENAME
    label = "Write again (adds a version)" if serve_md.is_file() else "Write TF Serving bundle"
    if st.button(label, key=key + ".write", icon=":material/deployed_code:",
                 help=f"export {what} as a SavedModel (Keras' own export) with batching_parameters.txt, "
                      "models.config and SERVE.md, into this run's artifacts"):
        with st.spinner("exporting the SavedModel…"):
            try:
                write()
            except (ValueError, OSError) as exc:
                st.error(f"could not write the bundle: {str(exc).splitlines()[0]}")
            else:
                st.rerun()  # redraw with the written bundle (and the button's "write again" label)
    if not serve_md.is_file():
        return
    try:
        data = zip_bundle(root)
    except (ValueError, OSError) as exc:
        st.warning(f"no zip download: {str(exc).splitlines()[0]}; the bundle is in {root}")
    else:
        st.download_button("Download bundle (.zip)", data, file_name="tfserving_bundle.zip", mime="application/zip",
                           key=key + ".zip", icon=":material/download:",
                           help="the whole folder: model/<version>/ SavedModel, batching_parameters.txt, "
                                "models.config, models.docker.config, SERVE.md")
    st.caption(f"Written to `{root}`")
    with st.expander("SERVE.md: how to run it on TensorFlow Serving", expanded=False):
        st.markdown(serve_md.read_text())


def widget_keys(prefix: str) -> Callable[[str], str]:
    """``key = widget_keys("train.")``: ``key("epochs")`` is the page's session-state key for that widget."""

    def key(name: str) -> str:
        return prefix + name

    return key
