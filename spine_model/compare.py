"""Ranking finished runs and deciding the champion: plain pandas, no MLflow calls."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

SCORE = "val_competition_score"
SETTINGS = ("backbone", "image_size", "pretrained", "epochs", "lr", "batch_size", "augment")
METRICS = (SCORE, "val_prior_score", "final_val_accuracy", "val_normal_mild_f1", "val_moderate_f1", "val_severe_f1")
VAL_FINGERPRINT = "data_val_studies_sha"


def rank_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with a score and a serving model, best (lowest score) first; ties: newest first."""
    if runs.empty:
        return runs
    usable = runs[runs[SCORE].notna() & runs["serving_model_uri"].notna()]
    ranked = usable.sort_values([SCORE, "start_time"], ascending=[True, False], kind="stable")
    return ranked.reset_index(drop=True).assign(rank=lambda frame: range(1, len(frame) + 1))


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
                "accuracy": _round(run.final_val_accuracy),
                "F1 N/M": _round(run.val_normal_mild_f1, 2),
                "F1 Mod": _round(run.val_moderate_f1, 2),
                "F1 Sev": _round(run.val_severe_f1, 2),
                "date": pd.Timestamp(run.start_time, unit="ms").strftime("%Y-%m-%d %H:%M"),
            }
        )
    return pd.DataFrame(rows)


def _settings(run) -> str:
    """Model settings in a few words, e.g. 'resnet18 224px 10ep lr=0.01 pretrained'."""
    params = {key: getattr(run, key, None) for key in SETTINGS}
    p = params
    text = f"{p['backbone']} {p['image_size']}px {p['epochs']}ep lr={p['lr']} bs={p['batch_size']}"
    flags = [name for name in ("pretrained", "augment") if str(params[name]) == "True"]
    return " ".join([text, *flags])


def _round(value, digits: int = 4):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), digits)


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


def decide(candidate: pd.Series, champion: pd.Series | None) -> Decision:
    """Promote the candidate only when it beats the champion on the same validation studies."""
    base = {"candidate_run_id": candidate["run_id"], "candidate_score": float(candidate[SCORE])}
    if champion is None:
        return Decision(True, "no champion yet", **base)
    base |= {"champion_run_id": champion["run_id"], "champion_score": float(champion[SCORE])}
    if candidate["run_id"] == champion["run_id"]:
        return Decision(False, "the best run is already the champion", **base)
    if candidate.get(VAL_FINGERPRINT) != champion.get(VAL_FINGERPRINT):
        return Decision(False, "validated on other studies than the champion, so the scores are not comparable", **base)
    if float(candidate[SCORE]) < float(champion[SCORE]):
        return Decision(True, "lower competition score on the same validation studies", **base)
    return Decision(False, "not better than the champion on the same validation studies", **base)


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (pandas' to_markdown needs an extra package)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
