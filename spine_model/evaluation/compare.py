"""Ranking finished runs and deciding the champion: plain pandas, no MLflow calls."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

SCORE = "val_competition_score"
MODEL_SUMMARY = "model_summary"  # a run param: the family's few words on its model
SETTINGS = (
    "model_family",
    MODEL_SUMMARY,
    "backbone",
    "image_size",
    "pretrained",
    "epochs",
    "lr",
    "batch_size",
    "augment",
)
METRICS = (
    SCORE, "val_prior_score", "val_limit", "val_share_of_attainable_gain", "final_val_accuracy", "val_normal_mild_f1",
    "val_moderate_f1", "val_severe_f1",
)  # fmt: skip
VAL_FINGERPRINT = "data_val_studies_sha"


def rank_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with a score, best (lowest score) first; ties: newest first.

    Runs without a serving model (e.g. a logged baseline) are ranked for comparison; only runs
    with one can become champion (see `servable`).
    """
    if runs.empty:
        return runs
    usable = runs[runs[SCORE].notna()]
    ranked = usable.sort_values([SCORE, "start_time"], ascending=[True, False], kind="stable")
    return ranked.reset_index(drop=True).assign(rank=lambda frame: range(1, len(frame) + 1))


def servable(ranked: pd.DataFrame) -> pd.DataFrame:
    """The ranked runs that logged a serving model, in rank order."""
    return ranked[ranked["serving_model_uri"].notna()]


def comparison_table(ranked: pd.DataFrame) -> pd.DataFrame:
    """The columns a person compares, formatted for a terminal or a Prefect table artifact."""
    rows = []
    for run in ranked.itertuples(index=False):
        rows.append(
            {
                "rank": run.rank,
                "run_id": run.run_id[:12],
                "name": run.run_name,
                "settings": _settings(run),
                "score": round(getattr(run, SCORE), 4),
                "prior": _round(run.val_prior_score),
                "gain": _gain(getattr(run, SCORE), run.val_prior_score),
                # synthetic data that knows its true posteriors: the best attainable, and the share reached
                "limit": _round(getattr(run, "val_limit", None)),
                "share": _share(getattr(run, "val_share_of_attainable_gain", None)),
                "accuracy": _round(run.final_val_accuracy),
                "F1 N/M": _round(run.val_normal_mild_f1, 2),
                "F1 Mod": _round(run.val_moderate_f1, 2),
                "F1 Sev": _round(run.val_severe_f1, 2),
                "minutes": _minutes(run.start_time, getattr(run, "end_time", None)),
                "date": pd.Timestamp(run.start_time, unit="ms").strftime("%Y-%m-%d %H:%M"),
            }
        )
    table = pd.DataFrame(rows)
    # The limit is known on synthetic data only: no empty columns for real data.
    empty = [column for column in ("limit", "share") if column in table and table[column].isna().all()]
    return table.drop(columns=empty)


def _settings(run) -> str:
    """Model and training settings in a few words, e.g. 'crops resnet18 5x128px channels ... 10ep lr=0.001'."""
    p = {key: _value(getattr(run, key, None)) for key in SETTINGS}
    model = p[MODEL_SUMMARY] or f"{p['backbone']} {p['image_size']}px"
    if p["epochs"] is None:  # a logged baseline, not a trained model
        return model
    flags = [name for name in ("pretrained", "augment") if str(p[name]) == "True"]
    return " ".join([model, f"{p['epochs']}ep lr={p['lr']} bs={p['batch_size']}", *flags])


def _value(value):
    """None for what a table holds as missing (None or NaN), else the value."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _gain(score, prior) -> str | None:
    """How far below the prior baseline a score is, in percent of the prior's score."""
    if _value(prior) is None or float(prior) == 0:
        return None
    return f"{100 * (float(prior) - float(score)) / float(prior):+.1f}%"


def _share(value) -> str | None:
    value = _value(value)
    return None if value is None else f"{100 * value:.1f}%"


def _minutes(start_time, end_time) -> float | None:
    if _value(end_time) is None:
        return None
    return round((float(end_time) - float(start_time)) / 60000, 1)


def _round(value, digits: int = 4):
    return None if _value(value) is None else round(float(value), digits)


@dataclass
class Decision:
    promote: bool
    reason: str
    candidate_run_id: str
    candidate_score: float
    champion_run_id: str | None = None
    champion_score: float | None = None

    def describe(self) -> str:
        verdict = "promoted to champion" if self.promote else "champion kept"
        scores = f"candidate {self.candidate_run_id} scores {self.candidate_score:.4f}"
        if self.champion_run_id:
            scores += f", champion {self.champion_run_id} scores {self.champion_score:.4f}"
        return f"{verdict}: {self.reason} ({scores})"


def candidate(ranked: pd.DataFrame, champion: pd.Series | None) -> pd.Series:
    """The run to weigh against the champion: the best servable run validated on the champion's
    own studies, since only those scores compare; the best servable run overall when none is (or
    when there is no champion). `ranked` holds servable runs in rank order."""
    if champion is not None:
        comparable = ranked[ranked[VAL_FINGERPRINT] == champion.get(VAL_FINGERPRINT)]
        if not comparable.empty:
            return comparable.iloc[0]
    return ranked.iloc[0]


NOT_COMPARABLE = (
    "validated on other studies than the champion, so the scores are not comparable; "
    "`spine compare --rebase` re-scores the champion on this run's validation studies and decides on that"
)


@dataclass
class Rebased:
    """The champion's score re-computed on another run's validation studies (`spine compare --rebase`)."""

    champion_run_id: str
    fingerprint: str  # VAL_FINGERPRINT of the studies it was re-scored on
    score: float
    studies: int

    def note(self) -> str:
        return (
            f"the champion re-scored on the candidate's {self.studies} validation studies: {self.score:.4f} "
            "(it may have trained on some of them, which favours the champion)"
        )


def rebase_candidate(ranked: pd.DataFrame, champion: pd.Series | None) -> pd.Series | None:
    """The run a rebase weighs: the best servable run validated on other studies than the champion
    (new data, another split seed), whose score does not compare with the champion's; None when
    there is no champion or no such run. `ranked` holds servable runs in rank order."""
    if champion is None or ranked.empty:
        return None
    elsewhere = ranked[ranked[VAL_FINGERPRINT] != champion.get(VAL_FINGERPRINT)]
    return elsewhere.iloc[0] if not elsewhere.empty else None


def rebased_champion(champion: pd.Series, rebased: Rebased) -> pd.Series:
    """The champion as if it had been validated on the rebased studies."""
    moved = champion.copy()
    moved[SCORE], moved[VAL_FINGERPRINT] = rebased.score, rebased.fingerprint
    return moved


PRIOR_SCORE = "val_prior_score"  # the class prior's score on the run's own validation studies


def decide(
    candidate: pd.Series,
    champion: pd.Series | None,
    score: str = SCORE,
    prior: str | None = PRIOR_SCORE,
    margin: float = 0.0,
) -> Decision:
    """Promote the candidate only when it beats its own prior baseline by more than `margin` (the
    `prior` score of the same studies; a model no better than the class frequencies is never
    served) and the champion (a lower `score`) on the same validation studies."""
    base = {"candidate_run_id": candidate["run_id"], "candidate_score": float(candidate[score])}
    prior_score = candidate.get(prior) if prior else None
    no_gain = prior_score is not None and pd.notna(prior_score) and not candidate[score] < prior_score - margin
    if no_gain:
        return Decision(
            False, f"does not beat its own prior baseline ({float(prior_score):.4f}) by more than {margin:g}", **base
        )
    if champion is None:
        return Decision(True, "no champion yet", **base)
    base |= {"champion_run_id": champion["run_id"], "champion_score": float(champion[score])}
    if candidate["run_id"] == champion["run_id"]:
        return Decision(False, "the best run is already the champion", **base)
    if candidate.get(VAL_FINGERPRINT) != champion.get(VAL_FINGERPRINT):
        return Decision(False, NOT_COMPARABLE, **base)
    if float(candidate[score]) < float(champion[score]):
        return Decision(True, f"lower {score} on the same validation studies", **base)
    return Decision(False, "not better than the champion on the same validation studies", **base)


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (pandas' to_markdown needs an extra package)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
