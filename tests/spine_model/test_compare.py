import pandas as pd

from spine_model.evaluation.compare import (
    Rebased,
    candidate,
    comparison_table,
    decide,
    markdown_table,
    rank_runs,
    rebase_candidate,
    rebased_champion,
    servable,
)


def _runs(*rows):
    base = {
        "run_name": "r", "experiment_id": "1", "val_prior_score": 1.2, "final_val_accuracy": 0.7,
        "val_normal_mild_f1": 0.8, "val_moderate_f1": 0.2, "val_severe_f1": 0.1, "backbone": "resnet18",
        "image_size": "64", "pretrained": "False", "epochs": "2", "lr": "0.001", "batch_size": "16",
        "augment": "True", "data_val_studies_sha": "abc", "serving_model_uri": "models:/m-1",
        "model_family": "seed", "model_summary": None, "end_time": None,
    }  # fmt: skip
    return pd.DataFrame([{**base, **row} for row in rows])


def test_rank_runs_best_first_and_only_servable_runs_can_be_champion():
    runs = _runs(
        {"run_id": "a", "val_competition_score": 0.9, "start_time": 1},
        {"run_id": "b", "val_competition_score": 0.7, "start_time": 2, "end_time": 2 + 90_000},
        {"run_id": "c", "val_competition_score": None, "start_time": 3},
        {"run_id": "d", "val_competition_score": 1.2, "start_time": 4, "serving_model_uri": None,
         "model_family": "prior", "model_summary": "class prior of the train split", "epochs": None},
        {"run_id": "e", "val_competition_score": 0.7, "start_time": 5,
         "model_family": "crops", "model_summary": "crops resnet18 5x32px channels"},
    )  # fmt: skip
    ranked = rank_runs(runs)
    assert ranked["run_id"].tolist() == ["e", "b", "a", "d"]  # ties: newest first; unscored runs left out
    assert ranked["rank"].tolist() == [1, 2, 3, 4]
    assert servable(ranked)["run_id"].tolist() == ["e", "b", "a"]
    assert list(comparison_table(ranked).columns)[:7] == [
        "rank",
        "run_id",
        "name",
        "settings",
        "score",
        "prior",
        "gain",
    ]
    table = comparison_table(ranked).set_index("run_id")
    assert table.loc["b", "settings"] == "resnet18 64px 2ep lr=0.001 bs=16 augment"
    assert table.loc["e", "settings"] == "crops resnet18 5x32px channels 2ep lr=0.001 bs=16 augment"
    assert table.loc["d", "settings"] == "class prior of the train split"
    assert table.loc["b", "gain"] == "+41.7%" and table.loc["d", "gain"] == "+0.0%"
    assert table.loc["b", "minutes"] == 1.5 and pd.isna(table.loc["a", "minutes"])
    assert "| 1 | e |" in markdown_table(comparison_table(ranked))


def test_decide_promotes_only_on_a_win_over_the_same_validation_studies():
    runs = _runs(
        {"run_id": "new", "val_competition_score": 0.6, "start_time": 2},
        {"run_id": "old", "val_competition_score": 0.8, "start_time": 1},
        {"run_id": "other", "val_competition_score": 0.5, "start_time": 3, "data_val_studies_sha": "zzz"},
    ).set_index("run_id", drop=False)
    assert decide(runs.loc["old"], None).promote
    win = decide(runs.loc["new"], runs.loc["old"])
    assert win.promote and win.champion_score == 0.8 and "0.6000" in win.describe()
    loss = decide(runs.loc["old"], runs.loc["new"])
    assert not loss.promote and "not better" in loss.reason
    assert not decide(runs.loc["new"], runs.loc["new"]).promote
    other = decide(runs.loc["other"], runs.loc["old"])
    assert not other.promote and "not comparable" in other.reason


def test_the_candidate_is_the_best_run_on_the_champions_own_studies():
    runs = _runs(
        {"run_id": "elsewhere", "val_competition_score": 0.3, "start_time": 3, "data_val_studies_sha": "zzz"},
        {"run_id": "better", "val_competition_score": 0.6, "start_time": 2},
        {"run_id": "champion", "val_competition_score": 0.8, "start_time": 1},
    )
    ranked = servable(rank_runs(runs))
    champion = ranked.set_index("run_id", drop=False).loc["champion"]
    # The top-ranked run used other validation studies: the one that beats the champion where the
    # scores compare is weighed instead, and wins.
    chosen = candidate(ranked, champion)
    assert chosen["run_id"] == "better" and decide(chosen, champion).promote
    assert candidate(ranked, None)["run_id"] == "elsewhere"  # no champion: the best overall
    without = ranked[ranked["run_id"] != "better"]  # only the champion compares: it stays
    assert candidate(without, champion)["run_id"] == "champion"
    assert not decide(candidate(without, champion), champion).promote
    foreign = candidate(ranked[ranked["run_id"] == "elsewhere"], champion)
    assert "not comparable" in decide(foreign, champion).reason


def test_a_rebase_weighs_the_best_run_on_other_studies_against_the_champion_rescored_on_them():
    runs = _runs(
        {"run_id": "champion", "val_competition_score": 0.8, "start_time": 1},
        {"run_id": "worse", "val_competition_score": 1.0, "start_time": 2},
        {"run_id": "resplit", "val_competition_score": 0.9, "start_time": 3, "data_val_studies_sha": "zzz"},
        {"run_id": "resplit-worse", "val_competition_score": 1.1, "start_time": 4, "data_val_studies_sha": "yyy"},
    )
    ranked = servable(rank_runs(runs))
    champion = ranked.set_index("run_id", drop=False).loc["champion"]
    kept = decide(candidate(ranked, champion), champion)
    assert not kept.promote  # frozen without a rebase: the resplit run's 0.9 does not compare with 0.8
    target = rebase_candidate(ranked, champion)
    assert target["run_id"] == "resplit"  # the best of the runs on other studies
    assert "spine compare --rebase" in decide(target, champion).reason
    on_their_studies = rebased_champion(champion, Rebased("champion", "zzz", 1.05, 10))
    assert champion["val_competition_score"] == 0.8 and champion["data_val_studies_sha"] == "abc"  # a copy
    won = decide(target, on_their_studies)
    assert won.promote and won.champion_score == 1.05
    assert not decide(target, rebased_champion(champion, Rebased("champion", "zzz", 0.85, 10))).promote
    assert rebase_candidate(ranked[~ranked["run_id"].str.startswith("resplit")], champion) is None
    assert rebase_candidate(ranked, None) is None


def test_a_run_that_does_not_beat_its_own_prior_is_never_promoted():
    runs = _runs(
        {"run_id": "useless", "val_competition_score": 4.81, "val_prior_score": 1.08, "start_time": 1},
        {"run_id": "close", "val_competition_score": 1.05, "val_prior_score": 1.08, "start_time": 2},
        {"run_id": "old", "val_competition_score": 1.5, "val_prior_score": 1.2, "start_time": 0},
    ).set_index("run_id", drop=False)
    first = decide(runs.loc["useless"], None)  # even with no champion yet
    assert not first.promote and "does not beat its own prior baseline (1.0800)" in first.describe()
    assert decide(runs.loc["close"], None).promote  # 1.05 < 1.08 with the default margin 0
    assert not decide(runs.loc["close"], None, margin=0.05).promote
    assert not decide(runs.loc["close"], runs.loc["old"].copy(), margin=0.05).promote  # before the champion test
    assert decide(runs.loc["close"], None, prior=None, margin=1.0).promote  # no prior to weigh: the old rule


def test_the_registry_keeps_a_useless_first_run_as_challenger_and_says_why(tmp_path):
    import mlflow

    from spine_model.tracking.registry import CHALLENGER, CHAMPION, alias_run_id, update_aliases

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    rows = []
    for name, score in (("useless", 4.81), ("useful", 0.9)):
        with mlflow.start_run(run_name=name) as run:
            info = mlflow.pyfunc.log_model(name="serving", python_model=Constant())
        rows.append({"run_id": run.info.run_id, "val_competition_score": score, "val_prior_score": 1.08,
                     "start_time": len(rows), "serving_model_uri": info.model_uri})  # fmt: skip
        ranked = rank_runs(_runs(*rows))
        decision = update_aliases(ranked, "gate-test", uri)
        if name == "useless":  # the first run: no champion yet, and still none after it
            assert not decision.promote and alias_run_id(CHAMPION, "gate-test", uri) is None
    client = mlflow.MlflowClient(uri)
    first = client.search_model_versions(f"name = 'gate-test' and run_id = '{rows[0]['run_id']}'")[0]
    assert "does not beat its own prior baseline" in first.tags["champion_decision"]
    assert decision.promote and alias_run_id(CHAMPION, "gate-test", uri) == rows[1]["run_id"]
    assert alias_run_id(CHALLENGER, "gate-test", uri) == rows[1]["run_id"]


def test_finished_runs_reads_every_page_of_a_large_experiment(tmp_path):
    """Ranking reads the whole experiment: with pages of 2, all 5 finished runs, and no unfinished one."""
    import mlflow

    from spine_model.tracking.registry import finished_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("paged")
    names = [f"run-{n}" for n in range(5)]
    for name in names:
        with mlflow.start_run(run_name=name):
            mlflow.log_metric("val_competition_score", 0.5)
    with mlflow.start_run(run_name="failed"):
        pass
    client = mlflow.MlflowClient(uri)
    failed = client.search_runs([client.get_experiment_by_name("paged").experiment_id], "run_name = 'failed'")[0]
    client.set_terminated(failed.info.run_id, "FAILED")
    runs = finished_runs("paged", uri, page_size=2)
    assert sorted(runs["run_name"]) == names
    assert runs["run_id"].is_unique and (runs["val_competition_score"] == 0.5).all()
