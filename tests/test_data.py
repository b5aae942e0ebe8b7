"""Datasets: built-ins offline, user CSV files (good and bad), deterministic splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.data import (
    BUILTIN_DATASETS,
    CsvError,
    DataSource,
    infer_task,
    load_builtin,
    load_csv,
    make_synthetic,
    preview_csv,
    split,
)


@pytest.mark.parametrize(
    ("name", "task", "n_features", "n_classes"),
    [
        ("digits", "classification", 64, 10),
        ("iris", "classification", 4, 3),
        ("wine", "classification", 13, 3),
        ("breast_cancer", "classification", 30, 2),
        ("diabetes", "regression", 10, 0),
        ("synthetic", "regression", 8, 0),
    ],
)
def test_builtin_datasets(name: str, task: str, n_features: int, n_classes: int) -> None:
    ds = load_builtin(name)
    assert (ds.task, ds.n_features, ds.n_classes) == (task, n_features, n_classes)
    assert ds.x.dtype == np.float32 and len(ds.feature_names) == n_features
    assert np.isfinite(ds.x).all()
    assert set(BUILTIN_DATASETS) >= {name}


def test_unknown_builtin_names_the_choices() -> None:
    with pytest.raises(ValueError, match="built-ins are digits, iris"):
        load_builtin("mnist")


def test_synthetic_follows_its_generating_model() -> None:
    a = make_synthetic(n_samples=100, n_features=3, activation="relu", seed=3)
    b = make_synthetic(n_samples=100, n_features=3, activation="relu", seed=3)
    np.testing.assert_array_equal(a.y, b.y)
    assert (a.y >= 0).all()  # relu output, no noise
    noisy = make_synthetic(n_samples=100, n_features=3, activation="relu", noise=0.5, seed=3)
    assert not np.allclose(noisy.y, a.y)
    with pytest.raises(ValueError, match="activation must be one of"):
        make_synthetic(activation="softplus")


def test_split_is_deterministic_and_stratified() -> None:
    ds = load_builtin("digits")
    s1, s2 = split(ds, seed=7), split(ds, seed=7)
    np.testing.assert_array_equal(s1.test.x, s2.test.x)
    assert sum(s1.sizes.values()) == len(ds.y)
    assert not np.array_equal(split(ds, seed=8).test.y, s1.test.y)
    # Stratified: every class appears in every part.
    for part in (s1.train, s1.val, s1.test):
        assert set(np.unique(part.y)) == set(range(10))


def _write(tmp_path: Path, text: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


GOOD_CSV = "a,b,color,label\n1,2,red,yes\n2,3,blue,no\n3,4,red,yes\n4,5,green,no\n5,6,red,yes\n6,7,blue,no\n"


def test_csv_classification_with_one_hot_and_labels(tmp_path: Path) -> None:
    ds = load_csv(_write(tmp_path, GOOD_CSV), "label")
    assert ds.task == "classification" and ds.class_labels == ("no", "yes")
    assert ds.feature_names == ("a", "b", "color_blue", "color_green", "color_red")
    assert ds.x.shape == (6, 5) and "one-hot encoded color" in ds.notes[0]


def test_csv_task_inferred_and_overridable(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{i * 0.37:.3f}" for i in range(40))
    path = _write(tmp_path, "x,y\n" + rows + "\n")
    assert load_csv(path, "y").task == "regression"
    ints = _write(tmp_path, "x,y\n" + "\n".join(f"{i},{i % 3}" for i in range(30)) + "\n", "ints.csv")
    ds = load_csv(ints, "y")
    assert ds.task == "classification" and ds.class_labels == ("0", "1", "2")
    assert load_csv(ints, "y", task="regression").task == "regression"


def test_numeric_class_labels_sort_numerically(tmp_path: Path) -> None:
    path = _write(tmp_path, "x,y\n" + "\n".join(f"{i},{[2, 10, 1][i % 3]}" for i in range(30)) + "\n")
    ds = load_csv(path, "y")
    assert ds.class_labels == ("1", "2", "10")
    assert ds.y[0] == 1  # the first row's label 2 is the second class


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"   \n\n", "is empty"),
        (b"1,2,3\n4,5,6\n", "no header row"),
        (b"only\n1\n2\n", "expected at least 2"),
        (b"a,b\n", "no data rows"),
        ("a,b\n\xe9,1\n".encode("latin-1"), "not UTF-8"),
        (b'a,b\n1,"2\n', "not a well-formed CSV"),
    ],
)
def test_bad_csv_files_get_one_line_errors(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(CsvError, match=message) as err:
        load_csv(_write(tmp_path, content), "b")
    assert "\n" not in str(err.value)


def test_csv_over_the_size_limit(tmp_path: Path) -> None:
    path = _write(tmp_path, "a,b\n" + "1,2\n" * 1000)
    with pytest.raises(CsvError, match="the limit is"):
        load_csv(path, "b", max_bytes=1000)
    with pytest.raises(CsvError, match="the limit is"):
        load_csv(path.read_bytes(), "b", max_bytes=1000)


def test_unknown_target_lists_columns(tmp_path: Path) -> None:
    with pytest.raises(CsvError, match="columns are a, b, color, label"):
        load_csv(_write(tmp_path, GOOD_CSV), "target")


def test_missing_values_need_an_explicit_choice(tmp_path: Path) -> None:
    path = _write(tmp_path, "a,b,y\n1,,0\n2,3,1\n,4,0\n5,6,1\n7,8,0\n9,1,1\n")
    with pytest.raises(CsvError, match=r"2 rows have missing values in a \(1\), b \(1\)"):
        load_csv(path, "y")
    dropped = load_csv(path, "y", missing="drop")
    assert len(dropped.y) == 4 and "dropped 2 rows" in dropped.notes[0]
    filled = load_csv(path, "y", missing="fill_mean")
    assert len(filled.y) == 6 and np.isfinite(filled.x).all()
    assert filled.x[2, 0] == pytest.approx(np.mean([1, 2, 5, 7, 9]))


def test_non_numeric_features_rejected_on_request(tmp_path: Path) -> None:
    with pytest.raises(CsvError, match="non-numeric feature columns color"):
        load_csv(_write(tmp_path, GOOD_CSV), "label", categorical="reject")


def test_single_class_and_text_regression_target(tmp_path: Path) -> None:
    with pytest.raises(CsvError, match="single class"):
        load_csv(_write(tmp_path, "a,y\n1,k\n2,k\n3,k\n"), "y")
    with pytest.raises(CsvError, match="not numeric"):
        load_csv(_write(tmp_path, "a,y\n1,k\n2,j\n3,k\n", "t.csv"), "y", task="regression")


def test_preview_reports_missing(tmp_path: Path) -> None:
    preview = preview_csv(_write(tmp_path, "a,b,y\n1,,0\n2,3,1\n"))
    assert preview.columns == ("a", "b", "y")
    assert preview.missing_by_column == {"b": 1} and preview.rows_with_missing == 1
    assert preview.n_rows == 2


def test_infer_task_on_text() -> None:
    import pandas as pd

    assert infer_task(pd.Series(["a", "b"])) == "classification"
    assert infer_task(pd.Series([0.5, 1.5, 2.25] * 10)) == "regression"


def test_data_source_validation() -> None:
    with pytest.raises(ValueError, match="needs a target column"):
        DataSource(csv_path="x.csv")
    with pytest.raises(ValueError, match="dataset must be one of"):
        DataSource(dataset="imagenet")
    with pytest.raises(ValueError, match="missing must be one of reject, drop, fill_mean"):
        DataSource(missing="guess")
    with pytest.raises(ValueError, match="task must be one of"):
        DataSource(task="ranking")
    with pytest.raises(ValueError, match="noise must be a finite number"):
        DataSource(dataset="synthetic", noise=float("nan"))
    assert DataSource("iris").load().n_classes == 3
