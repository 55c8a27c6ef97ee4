"""The rater app's pages while no pair is on screen, and how a page learns that labelling is over:
waiting for pairs (or their clips), labelling over, the run finished with its result."""

from __future__ import annotations

import streamlit as st
from prefloop.apps.dashboard import Progress, parse_progress, trainer_status_line
from prefloop.apps.rating import RaterSession

from prefloop.store import PreferenceStore

WAITING_POLL_S = 2.0
RUN_END_POLL_S = 3.0  # how soon a page showing a pair learns that the run is complete
# Trainer statuses after which it uses no more labels (its unanswered pairs are withdrawn).
LABELLING_OVER = ("evaluating", "finished")


def watch_for_run_end(store: PreferenceStore) -> None:
    """While a pair is on screen: redraw the page the moment the trainer says the run is complete."""

    @st.fragment(run_every=RUN_END_POLL_S)
    def watch() -> None:
        progress = parse_progress(store.get_meta("progress"))
        if progress is not None and progress.status in LABELLING_OVER:
            st.rerun(scope="app")

    watch()


def run_result_line(progress: Progress) -> str | None:
    """The finished run's result for raters: its evaluation return (from the trainer's
    ``eval_return_mean`` or its closing message), None when the trainer did not say."""
    if progress.eval_return is not None:
        context = []
        if progress.random_return is not None:
            context.append(f"an agent acting at random scores {progress.random_return:.1f}")
        if progress.reward_threshold is not None:
            context.append(f"the task counts {progress.reward_threshold:g} as solved")
        more = f" (for comparison: {'; '.join(context)})" if context else ""
        return f"The trained agent's return, on the task's own score: **{progress.eval_return:.1f}**{more}."
    if progress.message:
        return f"Trainer: {progress.message}"
    return None


def finished_view(session: RaterSession, store: PreferenceStore) -> None:
    """The page once labelling is over: thanks, then the run's result (polled until it is in)."""

    @st.fragment(run_every=WAITING_POLL_S)
    def finished() -> None:
        progress = parse_progress(store.get_meta("progress"))
        if progress is None or progress.status not in LABELLING_OVER:
            st.rerun(scope="app")  # a resumed run asks again
        if progress.status == "finished":
            st.success("Training has finished -- this run is complete, so there is nothing left to compare. "
                       "Thank you for your help!")
            result = run_result_line(progress)
            if result:
                st.markdown(result)
        else:
            st.info("Labelling is over -- thank you! The trainer is evaluating the agent your answers "
                    "taught; its result appears here in a moment.")
        counts = store.counts()
        st.caption(f"Your answers today: **{session.labels_today()}** · Answers from all raters in this run: "
                   f"**{counts['labels']}**")

    finished()


def waiting_view(session: RaterSession, store: PreferenceStore) -> None:
    @st.fragment(run_every=WAITING_POLL_S)
    def waiting() -> None:
        if session.current is None:
            session.heartbeat()
        if session.current is not None or session.paused:
            st.rerun(scope="app")
        progress = parse_progress(store.get_meta("progress"))
        if progress is not None and progress.status in LABELLING_OVER:
            st.rerun(scope="app")  # the page for a complete run
        elif session.queue.checks_only:
            st.warning(
                "No pairs for you right now: several of your recent answers disagreed with pairs whose "
                "answer is known, so for now you get only such pairs, and none is left. Your answers are "
                "all kept. Have another look at the guideline; when the trainer adds pairs with a known answer you "
                "will get them here, and once your answers agree again you get every kind of pair. This "
                "page refreshes by itself."
            )
        elif session.queue.preparing:
            st.info(
                f"Preparing the clips of {session.queue.preparing} "
                f"{'pair' if session.queue.preparing == 1 else 'pairs'} -- they will appear here "
                "in a moment; this page refreshes by itself."
            )
        else:
            st.info(
                "No pairs are waiting right now -- the trainer will add more; this page "
                "refreshes by itself."
            )
        if not session.queue.checks_only:
            st.text(trainer_status_line(progress))  # holds the trainer's message: plain text
        elif progress is not None and progress.fraction_done is not None and progress.status != "finished":
            # Not "the trainer is waiting for your comparisons": the warning above says there are
            # none for this rater now.
            st.text(f"{progress.fraction_done:.0%} of training done.")
        if progress is not None and progress.fraction_done is not None and progress.status != "finished":
            st.progress(progress.fraction_done)
        st.caption(f"Your answers today: **{session.labels_today()}**")

    waiting()
