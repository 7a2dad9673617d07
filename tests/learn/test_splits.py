import json

import numpy as np
import pandas as pd
import pytest

from mimir.learn.splits import Splits, SplitsError, load_or_create_splits, make_splits, subject_scores
from mimir.runs.layout import CrossvalFolder

TARGETS = ("age", "height")


def cohort(n_subjects: int, seed: int = 0) -> pd.DataFrame:
    """Subjects with one or two visits; height is missing for every third subject."""
    rng = np.random.default_rng(seed)
    rows = []
    for subject in range(n_subjects):
        age = rng.uniform(40, 80)
        for instance in (2, 3) if subject % 4 == 0 else (2,):
            rows.append({
                "eid": 1_000_000 + subject, "instance": instance, "age": age + (instance - 2) * 2.0,
                "height": np.nan if subject % 3 == 0 else rng.normal(170, 10),
            })
    return pd.DataFrame(rows)


def test_all_visits_of_a_subject_share_a_fold():
    table = cohort(40)
    splits = make_splits(table, "m", TARGETS, 5, seed=1)
    folds = pd.Series(splits.fold_column(table["eid"]), index=table.index)
    assert table.assign(fold=folds).groupby("eid")["fold"].nunique().max() == 1
    assert set(splits.fold_of_eid) == set(table["eid"])


@pytest.mark.parametrize(("n_subjects", "folds"), [(10, 10), (23, 3), (101, 10), (7, 2)])
def test_fold_sizes_differ_by_at_most_one_subject(n_subjects, folds):
    splits = make_splits(cohort(n_subjects), "m", TARGETS, folds, seed=3)
    counts = splits.subject_counts()
    assert sum(counts) == n_subjects and max(counts) - min(counts) <= 1


def test_folds_are_stratified_by_value_and_by_missingness():
    n, folds = 200, 5
    table = pd.DataFrame({
        "eid": np.arange(n) + 1, "instance": 2, "age": np.arange(n, dtype=float),
        "height": np.where(np.arange(n) % 2 == 0, np.nan, np.arange(n) * 0.5),
    })
    splits = make_splits(table, "m", TARGETS, folds, seed=0)
    fold = splits.fold_column(table["eid"])
    means = [table["age"][fold == k].mean() for k in range(folds)]
    # One subject per fold from every block of `folds` ordered subjects: fold means stay close.
    assert max(means) - min(means) < folds
    known_height = [int(table["height"][fold == k].notna().sum()) for k in range(folds)]
    assert max(known_height) - min(known_height) <= 1
    random_fold = np.random.default_rng(0).integers(0, folds, n)
    random_means = [table["age"][random_fold == k].mean() for k in range(folds)]
    assert max(random_means) - min(random_means) > max(means) - min(means)


def test_subject_scores_average_visits_and_ignore_missing_targets():
    table = pd.DataFrame({"eid": [1, 1, 2, 3], "instance": [2, 3, 2, 2],
                          "age": [10.0, 20.0, 30.0, 5.0], "height": [np.nan, np.nan, 2.0, 1.0]})
    scores = subject_scores(table, TARGETS).set_index("eid")
    assert scores.loc[1, "n_known"] == 1 and scores.loc[2, "n_known"] == 2
    # eid 1: mean age 15 ranks middle of (15, 30, 5); no height -> score from age alone.
    assert scores.loc[1, "score"] == pytest.approx(0.5)
    assert scores.loc[2, "score"] == pytest.approx(1.0)  # highest age, highest height
    assert scores.loc[3, "score"] == pytest.approx(0.0)


def test_seed_decides_the_assignment():
    table = cohort(60)
    first = make_splits(table, "m", TARGETS, 4, seed=7).fold_of_eid
    assert make_splits(table, "m", TARGETS, 4, seed=7).fold_of_eid == first
    assert make_splits(table, "m", TARGETS, 4, seed=8).fold_of_eid != first


def test_splits_are_written_once_and_reused(tmp_path):
    table, path = cohort(30), CrossvalFolder(tmp_path).splits
    created = load_or_create_splits(path, table, "m", TARGETS, 3, seed=0)
    text = path.read_text()
    assert json.loads(text)["subjects_per_fold"] == [10, 10, 10]
    again = load_or_create_splits(path, table, "m", TARGETS, None, seed=0)
    assert again == created and path.read_text() == text
    assert Splits.from_json(text) == created


@pytest.mark.parametrize(
    ("folds", "seed", "module", "message"),
    [(5, 0, "m", "folds 3 (asked: 5)"), (3, 1, "m", "seed 0 (asked: 1)"), (3, 0, "other", "module m")],
)
def test_a_different_fold_count_seed_or_module_is_an_error(tmp_path, folds, seed, module, message):
    table = cohort(30)
    load_or_create_splits(CrossvalFolder(tmp_path).splits, table, "m", TARGETS, 3, seed=0)
    with pytest.raises(SplitsError, match="keeps one split") as caught:
        load_or_create_splits(CrossvalFolder(tmp_path).splits, table, module, TARGETS, folds, seed)
    assert message in str(caught.value)


def test_new_subjects_are_an_error(tmp_path):
    load_or_create_splits(CrossvalFolder(tmp_path).splits, cohort(30), "m", TARGETS, 3, seed=0)
    with pytest.raises(SplitsError, match="1 subjects are new"):
        load_or_create_splits(CrossvalFolder(tmp_path).splits, cohort(31), "m", TARGETS, 3, seed=0)


def test_too_few_subjects_or_folds_are_errors():
    with pytest.raises(SplitsError, match="cannot fill"):
        make_splits(cohort(3), "m", TARGETS, 5, seed=0)
    with pytest.raises(SplitsError, match="at least 2 folds"):
        make_splits(cohort(10), "m", TARGETS, 1, seed=0)
