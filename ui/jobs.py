"""The session's background jobs on screen: the sidebar panel, start buttons, outcomes.

Long work runs as a `workbench.jobs.Job` owned by the session (`AppState.jobs`), so a change
of page does not stop it. Every page shows the running jobs in the sidebar, polled by a
fragment; when a job ends the whole page reruns once so its result appears where it belongs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from ui.state import AppState, show_bug, show_error
from workbench.errors import WorkbenchError, first_line
from workbench.jobs import Job
from workbench.stages.estimate import about

__all__ = [
    "KEEPS_PARTIAL",
    "NAMES",
    "POLL_SECONDS",
    "job_lines",
    "live",
    "outcome",
    "recipe_conflict_box",
    "rerun_when_ended",
    "show_jobs",
    "start_button",
]

KEEPS_PARTIAL = frozenset({"train", "sensitivity"})  # a stopped job of these keeps its work
POLL_SECONDS = 0.5  # the sidebar panel (and a page's live view) redraws this often
NAMES = {
    "calibrate": "calibration", "train": "training", "convert": "conversion",
    "export": "export", "pte": "ExecuTorch build", "latency": "latency measurement",
    "sensitivity": "sensitivity search", "gap": "stage comparison",
    "search": "mixed precision search",
}  # fmt: skip


def show_jobs(state: AppState) -> None:
    """The sidebar: the model and recipe in use; running jobs with progress, elapsed time
    and Stop; the session's job log."""
    watched = {id(job) for job in state.jobs.running()}

    @st.fragment(run_every=POLL_SECONDS if watched else None)
    def panel() -> None:
        running = state.jobs.running()
        if watched - {id(job) for job in running}:
            st.rerun()  # a job ended: redraw the whole page with its result
        if running:
            st.markdown("**Running**")
        for job in running:
            _running_job(job)
        ended = [j for j in state.jobs.log if not j.running]
        if ended and ended[-1].status == "failed":  # the page that starts it shows the box
            last = ended[-1]
            problem = getattr(last.error, "problem", None) or first_line(last.error)
            st.markdown(f":red[**{last.label} failed**] after {last.elapsed:.0f} s: {problem}")
        if state.jobs.log:
            with st.expander(f"Job log ({len(state.jobs.log)})"):
                st.markdown("\n".join(f"{n}. {line}" for n, line in
                                       enumerate(job_lines(state.jobs.log), 1)))  # fmt: skip

    with st.sidebar:
        if state.spec is not None:
            rules = len(state.recipe.overrides)
            form = ", reference representation" if state.recipe.reference_representation else ""
            st.caption(f"{state.spec} · recipe: {state.recipe.mode.upper()} with "
                       f"{state.recipe.backend}, {rules} rule{'s' * (rules != 1)}"
                       f"{form}")  # fmt: skip
        panel()


def _running_job(job: Job[Any]) -> None:
    estimate = f" of {about(job.estimate)}" if job.estimate else ""
    text = f"{job.label}: {job.text or 'starting…'} · {job.elapsed:.0f} s{estimate}"
    st.progress(job.fraction, text=text)
    if job.stopping:
        st.caption("Stopping at the end of the current step…")
    elif st.button("Stop", key=f"stop-{id(job)}", help=f"Stop the {NAMES.get(job.kind, job.kind)}"):
        job.stop()


def job_lines(jobs: list[Job[Any]]) -> list[str]:
    """One line per job: what ran, how it ended, how long it took against the estimate."""
    lines = []
    for job in jobs:
        estimate = f" (estimated {job.estimate:.0f} s)" if job.estimate else ""
        lines.append(f"{job.kind} · {job.label} · {job.status} · {job.elapsed:.1f} s{estimate}")
    return lines


def outcome(job: Job[Any] | None) -> None:
    """How a job ended when it did not succeed: an error box, or a note that it stopped."""
    if job is None or job.running:
        return
    what = NAMES.get(job.kind, job.kind).capitalize()
    if job.status == "stopped":
        kept = "what it measured is kept" if job.kind in KEEPS_PARTIAL else "nothing it " \
            "made was kept; what there was before is unchanged"  # fmt: skip
        st.info(f"{what} stopped after {job.elapsed:.0f} s: {kept}.")
    elif job.status == "failed" and job.error is not None:
        if isinstance(job.error, WorkbenchError):
            show_error(job.error)
        else:
            show_bug(job.label, job.error)


def start_button(
    state: AppState,
    kind: str,
    label: str,
    start: Callable[[], object],
    *,
    estimate: float | None = None,
    key: str,
    primary: bool = True,
    disabled: bool = False,
    help: str | None = None,
) -> None:
    """A button that starts a job, with its estimated time beside it.

    While a job of the same kind runs, a click asks first whether to stop that one. Once a
    job has started the whole page reruns, so the sidebar and the page follow it.
    """
    text = f"{label} ({about(estimate)})" if estimate else label
    confirm = f"confirm-{key}"
    running = state.jobs.running(kind)
    clicked = st.button(text, key=key, type="primary" if primary else "secondary",
                        disabled=disabled, help=help)  # fmt: skip
    if clicked and running:
        st.session_state[confirm] = True
    if st.session_state.get(confirm):
        if not running:
            st.session_state[confirm] = False
        else:
            job = running[0]
            st.warning(f"A {NAMES.get(kind, kind)} is running ({job.label}, {job.fraction:.0%} "
                       f"after {job.elapsed:.0f} s). Stop it and start this one?")  # fmt: skip
            cols = st.columns([1, 1, 4])
            if cols[0].button("Stop it and start", key=f"{confirm}-yes", type="primary"):
                st.session_state[confirm] = False
                start()
                st.rerun()
            if cols[1].button("Keep it running", key=f"{confirm}-no"):
                st.session_state[confirm] = False
                st.rerun()
            return
    if clicked:
        start()
        st.rerun()


def rerun_when_ended(state: AppState, kinds: tuple[str, ...]) -> Callable[[], None]:
    """For a page's polling fragment: a check that reruns the whole page once a job of these
    kinds that runs now has ended (the sidebar does too; whichever polls first)."""
    watched = [job for kind in kinds for job in state.jobs.running(kind)]

    def check() -> None:
        if any(not job.running for job in watched):
            st.rerun()

    return check


def live(state: AppState, kinds: tuple[str, ...], every: float = POLL_SECONDS) -> float | None:
    """The `run_every` for a page's live view: poll while a job of these kinds runs."""
    return every if any(state.jobs.running(k) for k in kinds) else None


def recipe_conflict_box(state: AppState) -> None:
    """When another tab changed this model's autosaved recipe: say so, and let the user
    choose whose recipe to keep (nothing is overwritten meanwhile)."""
    if state.check_recipe_conflict() is None:
        return
    st.warning("Another tab (or the CLI) changed the autosaved recipe of this model since this "
               "page read it. This page keeps its own recipe and autosaves nothing until you "
               "choose.", icon="⚠️")  # fmt: skip
    cols = st.columns([1, 1, 4])
    if cols[0].button("Use theirs", key="conflict-theirs"):
        state.resolve_recipe_conflict(keep_mine=False)
        st.rerun()
    if cols[1].button("Keep mine", key="conflict-mine", help="Overwrites the other recipe."):
        state.resolve_recipe_conflict(keep_mine=True)
        st.rerun()
