"""Datasets: the built-in offline sets, user CSV files, and deterministic splits.

Nothing here downloads anything: the built-ins are the data scikit-learn ships
inside its wheel, plus a synthetic set generated from ``y = f(Wx + b)``.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

TASKS = ("classification", "regression")
BUILTIN_DATASETS = ("digits", "iris", "wine", "breast_cancer", "diabetes", "synthetic", "sequences")
SYNTHETIC_ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid")
MAX_CSV_BYTES = 50 * 1024 * 1024
MISSING_POLICIES = ("reject", "drop", "fill_mean")
CATEGORICAL_POLICIES = ("onehot", "reject")
# A numeric target with at most this many distinct integer values is a class label.
MAX_INFERRED_CLASSES = 20
# Built-in sets whose features are the pixels of an image, and that image's (H, W, C).
BUILTIN_IMAGE_SHAPES = {"digits": (8, 8, 1)}
MAX_IMAGE_SIDE = 4096
# The generated sequences: token ids 0..SEQUENCE_VOCAB-1; the rule asks whether A comes before B.
SEQUENCE_VOCAB = 10
TOKEN_A, TOKEN_B = 1, 2
MIN_SEQ_LENGTH, MAX_SEQ_LENGTH = 3, 200


@dataclass(frozen=True)
class Dataset:
    """Features and target with the metadata that travels with a trained model."""

    name: str
    task: str
    x: np.ndarray  # float32, shape (n, n_features)
    y: np.ndarray  # int64 class index (classification) or float32 (regression)
    feature_names: tuple[str, ...]
    class_labels: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what loading did to the data (rows dropped, columns encoded)
    # (H, W, C) when each row is an image's pixels in row-major order; () for plain rows.
    input_shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got {self.task!r}")
        if self.x.ndim != 2 or len(self.x) != len(self.y):
            raise ValueError(
                f"x must be 2-D with one row per target; got x {self.x.shape}, y {self.y.shape}"
            )
        if self.x.shape[1] != len(self.feature_names):
            raise ValueError(
                f"{len(self.feature_names)} feature names for {self.x.shape[1]} feature columns"
            )
        if self.input_shape:
            check_image_shape(self.input_shape, self.x.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.class_labels)

    def spec(self) -> DataSpec:
        return DataSpec(
            name=self.name,
            task=self.task,
            feature_names=self.feature_names,
            class_labels=self.class_labels,
            input_shape=self.input_shape,
        )


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data (no arrays): saved beside the model.

    ``input_shape`` is (H, W, C) for image data (the features are the pixels in
    row-major order) and empty for plain feature rows.
    """

    name: str
    task: str
    feature_names: tuple[str, ...]
    class_labels: tuple[str, ...] = ()
    input_shape: tuple[int, ...] = ()

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_classes(self) -> int:
        return len(self.class_labels)

    @property
    def model_input_shape(self) -> tuple[int, ...]:
        """The shape of one model input: (H, W, C) for images, (n_features,) otherwise."""
        return tuple(self.input_shape) or (self.n_features,)

    def shape_rows(self, x: np.ndarray) -> np.ndarray:
        """Flat feature rows (n, n_features) as model inputs (n, *model_input_shape)."""
        return x.reshape((len(x), *self.model_input_shape))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "feature_names": list(self.feature_names),
            "class_labels": list(self.class_labels),
            "input_shape": list(self.input_shape),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        return cls(
            name=str(d["name"]),
            task=str(d["task"]),
            feature_names=tuple(d["feature_names"]),
            class_labels=tuple(d.get("class_labels", ())),
            input_shape=tuple(int(n) for n in d.get("input_shape", ())),
        )


# -- image views --------------------------------------------------------------------------


def check_image_shape(shape: tuple[int, ...], n_features: int | None = None) -> tuple[int, int, int]:
    """Validate an (H, W, C) image shape (and that it holds ``n_features`` pixels); returns it."""
    shape = tuple(shape)
    if len(shape) != 3 or not all(
        isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_IMAGE_SIDE for n in shape
    ):
        raise ValueError(f"image shape must be three positive integers H,W,C (e.g. 8,8,1); got {shape!r}")
    size = shape[0] * shape[1] * shape[2]
    if n_features is not None and size != n_features:
        raise ValueError(
            f"image shape {'x'.join(map(str, shape))} holds {size} values but the data has {n_features} features;"
            " H*W*C must equal the feature count"
        )
    return shape  # type: ignore[return-value]


def parse_image_shape(text: str) -> tuple[int, ...]:
    """'8,8,1' or '8x8x1' -> (8, 8, 1); 'H,W' means one channel; '' -> () (no image view)."""
    text = text.strip().lower()
    if not text:
        return ()
    try:
        parts = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"image shape must be H,W,C (e.g. 8,8,1 or 28,28,1); got {text!r}") from None
    if len(parts) == 2:
        parts = (*parts, 1)
    return check_image_shape(parts)


def with_image_shape(dataset: Dataset, shape: tuple[int, ...]) -> Dataset:
    """The same rows seen as images of ``shape`` (validated against the feature count)."""
    shape = check_image_shape(tuple(shape), dataset.n_features)
    return replace(dataset, input_shape=shape)


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split
    seed: int
    sizes: dict[str, int] = field(default_factory=dict)


# -- built-in datasets -------------------------------------------------------------------


def load_builtin(
    name: str,
    *,
    seed: int = 0,
    n_samples: int = 2000,
    n_features: int = 8,
    activation: str = "tanh",
    noise: float = 0.0,
    seq_length: int = 12,
) -> Dataset:
    """One of :data:`BUILTIN_DATASETS`. The ``synthetic`` options apply to it only, ``seq_length`` to
    ``sequences``."""
    if name == "sequences":
        return make_sequences(n_samples=n_samples, length=seq_length, seed=seed)
    if name == "synthetic":
        return make_synthetic(
            n_samples=n_samples, n_features=n_features, activation=activation, noise=noise, seed=seed
        )
    from sklearn import datasets as skd  # deferred: sklearn import is ~1 s

    loaders = {
        "digits": skd.load_digits,
        "iris": skd.load_iris,
        "wine": skd.load_wine,
        "breast_cancer": skd.load_breast_cancer,
        "diabetes": skd.load_diabetes,
    }
    if name not in loaders:
        raise ValueError(
            f"unknown dataset {name!r}; built-ins are {', '.join(BUILTIN_DATASETS)}"
        )
    bunch = loaders[name]()
    x = np.asarray(bunch.data, dtype=np.float32)
    feature_names = tuple(str(f) for f in getattr(bunch, "feature_names", [])) or tuple(
        f"x{i}" for i in range(x.shape[1])
    )
    if name == "diabetes":
        return Dataset(name, "regression", x, np.asarray(bunch.target, np.float32), feature_names)
    labels = tuple(str(t) for t in getattr(bunch, "target_names", np.unique(bunch.target)))
    return Dataset(name, "classification", x, np.asarray(bunch.target, np.int64), feature_names, labels)


def _activate(z: np.ndarray, activation: str) -> np.ndarray:
    if activation == "linear":
        return z
    if activation == "relu":
        return np.maximum(z, 0.0)
    if activation == "tanh":
        return np.tanh(z)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    raise ValueError(
        f"synthetic activation must be one of {', '.join(SYNTHETIC_ACTIVATIONS)}; got {activation!r}"
    )


def make_synthetic(
    *,
    n_samples: int = 2000,
    n_features: int = 8,
    activation: str = "tanh",
    noise: float = 0.0,
    seed: int = 0,
) -> Dataset:
    """Regression data from a single neuron, ``y = f(Wx + b) + noise``.

    A model with no hidden layer and output activation ``f`` can represent it
    exactly, so it is the check that plain gradient descent drives the loss to
    (near) zero.
    """
    if not 10 <= n_samples <= 1_000_000:
        raise ValueError(f"n_samples must be in [10, 1000000]; got {n_samples}")
    if not 1 <= n_features <= 1000:
        raise ValueError(f"n_features must be in [1, 1000]; got {n_features}")
    if not (noise >= 0 and math.isfinite(noise)):
        raise ValueError(f"noise must be a finite number >= 0; got {noise}")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_samples, n_features)).astype(np.float32)
    w = rng.normal(scale=1.0 / math.sqrt(n_features), size=(n_features,)).astype(np.float32)
    b = np.float32(rng.normal(scale=0.1))
    y = _activate(x @ w + b, activation)
    if noise:
        y = y + rng.normal(scale=noise, size=y.shape)
    return Dataset(
        name="synthetic",
        task="regression",
        x=x,
        y=y.astype(np.float32),
        feature_names=tuple(f"x{i}" for i in range(n_features)),
        notes=(f"y = {activation}(Wx + b) + N(0, {noise}^2)",),
    )


def make_sequences(*, n_samples: int = 2000, length: int = 12, seed: int = 0) -> Dataset:
    """Sequence classification with a known rule: does token A (1) come before token B (2)?

    Each row is ``length`` token ids in 0..SEQUENCE_VOCAB-1 holding exactly one A
    and one B at random positions; the other tokens are filler (0, 3..9). The
    label is 1 when A comes first. Exactly half the rows are each class, so
    guessing scores 0.5, and neither a token count nor any single position
    answers it: the model has to remember order.
    """
    if not 10 <= n_samples <= 1_000_000:
        raise ValueError(f"n_samples must be in [10, 1000000]; got {n_samples}")
    if not MIN_SEQ_LENGTH <= length <= MAX_SEQ_LENGTH:
        raise ValueError(f"sequence length must be in [{MIN_SEQ_LENGTH}, {MAX_SEQ_LENGTH}]; got {length}")
    rng = np.random.default_rng(seed)
    filler = np.array([t for t in range(SEQUENCE_VOCAB) if t not in (TOKEN_A, TOKEN_B)])
    x = rng.choice(filler, size=(n_samples, length))
    y = (np.arange(n_samples) % 2).astype(np.int64)
    rng.shuffle(y)
    for row in range(n_samples):
        first, second = np.sort(rng.choice(length, size=2, replace=False))
        a, b = (first, second) if y[row] == 1 else (second, first)
        x[row, a], x[row, b] = TOKEN_A, TOKEN_B
    return Dataset(
        name="sequences",
        task="classification",
        x=x.astype(np.float32),
        y=y,
        feature_names=tuple(f"t{i}" for i in range(length)),
        class_labels=("B first", "A first"),
        notes=(f"{length} tokens in 0..{SEQUENCE_VOCAB - 1}; label: does token {TOKEN_A} come before "
               f"token {TOKEN_B}",),
    )


# -- CSV ----------------------------------------------------------------------------------


class CsvError(ValueError):
    """A CSV file that cannot be used, with a one-line reason."""


@dataclass(frozen=True)
class CsvPreview:
    """What the UI shows before the user picks a target: columns, a head, missing counts."""

    columns: tuple[str, ...]
    head: Any  # pandas.DataFrame of the first rows
    n_rows: int
    missing_by_column: dict[str, int]
    rows_with_missing: int


def _read_csv_frame(source: str | Path | bytes, max_bytes: int) -> Any:
    import pandas as pd

    if isinstance(source, bytes):
        raw = source
        label = "uploaded file"
    else:
        path = Path(source)
        label = path.name
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise CsvError(f"cannot read {path}: {exc.strerror or exc}") from None
        if size > max_bytes:
            raise CsvError(
                f"{label} is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB"
            )
        raw = path.read_bytes()
    if len(raw) > max_bytes:
        raise CsvError(f"{label} is {len(raw) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
    if not raw.strip():
        raise CsvError(f"{label} is empty; expected a header row and data rows")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvError(
            f"{label} is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8 CSV"
        ) from None
    try:
        frame = pd.read_csv(io.StringIO(text))
    except pd.errors.EmptyDataError:
        raise CsvError(f"{label} has no columns; expected a header row and data rows") from None
    except pd.errors.ParserError as exc:
        first = str(exc).strip().splitlines()[-1]
        raise CsvError(f"{label} is not a well-formed CSV: {first}") from None
    if frame.shape[1] < 2:
        raise CsvError(
            f"{label} has {frame.shape[1]} column; expected at least 2 (features and a target)"
        )
    if len(frame) == 0:
        raise CsvError(f"{label} has a header but no data rows")
    # A header made of numbers means the file has no header row.
    numeric_header = 0
    for col in frame.columns:
        try:
            float(str(col))
            numeric_header += 1
        except ValueError:
            pass
    if numeric_header == frame.shape[1]:
        raise CsvError(
            f"{label} has no header row (its first line is all numbers); add a line of column names"
        )
    return frame


def preview_csv(source: str | Path | bytes, *, max_bytes: int = MAX_CSV_BYTES, rows: int = 10) -> CsvPreview:
    frame = _read_csv_frame(source, max_bytes)
    missing = {str(c): int(n) for c, n in frame.isna().sum().items() if n}
    return CsvPreview(
        columns=tuple(str(c) for c in frame.columns),
        head=frame.head(rows),
        n_rows=len(frame),
        missing_by_column=missing,
        rows_with_missing=int(frame.isna().any(axis=1).sum()),
    )


def infer_task(target: Any) -> str:
    """classification for text or small sets of integer labels, else regression."""
    import pandas as pd

    values = target.dropna()
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "classification"
    unique = values.unique()
    integral = bool(np.all(np.equal(np.mod(unique.astype(float), 1), 0)))
    if integral and len(unique) <= MAX_INFERRED_CLASSES:
        return "classification"
    return "regression"


def load_csv(
    source: str | Path | bytes,
    target: str,
    *,
    task: str | None = None,
    missing: str = "reject",
    categorical: str = "onehot",
    max_bytes: int = MAX_CSV_BYTES,
    name: str = "csv",
) -> Dataset:
    """Load a user CSV as a :class:`Dataset`.

    ``task`` is inferred from the target when None. Missing values are never
    handled silently: ``missing`` must say what to do (``reject`` raises with the
    count and columns, ``drop`` drops those rows, ``fill_mean`` fills numeric
    features with their mean), and what was done is recorded in ``notes``.
    """
    import pandas as pd

    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {', '.join(MISSING_POLICIES)}; got {missing!r}")
    if categorical not in CATEGORICAL_POLICIES:
        raise ValueError(
            f"categorical must be one of {', '.join(CATEGORICAL_POLICIES)}; got {categorical!r}"
        )
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    frame = _read_csv_frame(source, max_bytes)
    frame.columns = [str(c) for c in frame.columns]
    if target not in frame.columns:
        raise CsvError(
            f"target column {target!r} not found; columns are {', '.join(frame.columns)}"
        )
    notes: list[str] = []

    target_missing = int(frame[target].isna().sum())
    if target_missing:
        frame = frame[frame[target].notna()]
        notes.append(f"dropped {target_missing} rows with no target value")
    features = frame.drop(columns=[target])
    na_cols = {c: int(n) for c, n in features.isna().sum().items() if n}
    if na_cols:
        n_rows = int(features.isna().any(axis=1).sum())
        described = ", ".join(f"{c} ({n})" for c, n in na_cols.items())
        if missing == "reject":
            raise CsvError(
                f"{n_rows} rows have missing values in {described};"
                " choose to drop those rows or fill with the column mean"
            )
        if missing == "drop":
            keep = ~features.isna().any(axis=1)
            frame, features = frame[keep], features[keep]
            notes.append(f"dropped {n_rows} rows with missing values in {described}")
        else:
            non_numeric = [c for c in na_cols if not pd.api.types.is_numeric_dtype(features[c])]
            if non_numeric:
                raise CsvError(
                    f"cannot fill missing values of non-numeric columns {', '.join(non_numeric)} with a mean;"
                    " drop those rows instead"
                )
            features = features.fillna({c: features[c].mean() for c in na_cols})
            notes.append(f"filled missing values with the column mean in {described}")
    if len(features) == 0:
        raise CsvError("no rows left after removing missing values")

    text_cols = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if text_cols:
        if categorical == "reject":
            raise CsvError(
                f"non-numeric feature columns {', '.join(text_cols)}; one-hot encode them or remove them"
            )
        features = pd.get_dummies(features, columns=text_cols, dtype=np.float32)
        notes.append(f"one-hot encoded {', '.join(text_cols)}")
    x = features.to_numpy(dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise CsvError("feature values include infinity; expected finite numbers")

    y_raw = frame[target]
    chosen_task = task or infer_task(y_raw)
    if chosen_task == "classification":
        labels, y = np.unique(y_raw.astype(str).to_numpy(), return_inverse=True)
        if len(labels) < 2:
            raise CsvError(f"target {target!r} has a single class; expected at least 2")
        # Numeric labels sort numerically ("2" before "10").
        if pd.api.types.is_numeric_dtype(y_raw):
            order = np.argsort([float(v) for v in labels])
            remap = np.empty_like(order)
            remap[order] = np.arange(len(order))
            labels, y = labels[order], remap[y]
        return Dataset(name, "classification", x, y.astype(np.int64),
                       tuple(features.columns), tuple(str(v) for v in labels), tuple(notes))
    if not pd.api.types.is_numeric_dtype(y_raw):
        raise CsvError(f"target {target!r} is not numeric; a regression target must be numbers")
    return Dataset(name, "regression", x, y_raw.to_numpy(dtype=np.float32),
                   tuple(features.columns), (), tuple(notes))


# -- splits -------------------------------------------------------------------------------


def split(dataset: Dataset, *, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15) -> Splits:
    """Deterministic shuffled split (stratified for classification when every class can be)."""
    for label, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 0.5:
            raise ValueError(f"{label} must be in (0, 0.5); got {frac}")
    n = len(dataset.y)
    if n < 10:
        raise ValueError(f"dataset has {n} rows; at least 10 are needed to split")
    from sklearn.model_selection import train_test_split

    idx = np.arange(n)
    stratify = None
    if dataset.task == "classification":
        counts = np.bincount(dataset.y)
        if counts.min() >= 3:
            stratify = dataset.y
    rest, test_idx = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=stratify)
    strat_rest = stratify[rest] if stratify is not None else None
    train_idx, val_idx = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), random_state=seed, stratify=strat_rest
    )
    part = lambda ix: Split(dataset.x[ix], dataset.y[ix])  # noqa: E731
    return Splits(
        train=part(train_idx),
        val=part(val_idx),
        test=part(test_idx),
        seed=seed,
        sizes={"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
    )


# -- a dataset choice that can be stored in a run's config -----------------------------


@dataclass(frozen=True)
class DataSource:
    """How to load a dataset: a built-in name, or a CSV path with its options.

    Stored in a run's config (``to_dict``) so a run can be reproduced.
    """

    dataset: str = "digits"
    csv_path: str | None = None
    target: str | None = None
    task: str | None = None
    missing: str = "reject"
    categorical: str = "onehot"
    n_samples: int = 2000
    n_features: int = 8
    synthetic_activation: str = "tanh"
    noise: float = 0.0
    seed: int = 0
    image_shape: tuple[int, ...] = ()  # (H, W, C): view each row as an image (for a cnn); () = plain rows
    seq_length: int = 12  # tokens per row of the generated sequences

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_shape", tuple(self.image_shape))
        if self.image_shape:
            check_image_shape(self.image_shape)
        if self.csv_path is None and self.dataset not in BUILTIN_DATASETS:
            raise ValueError(
                f"dataset must be one of {', '.join(BUILTIN_DATASETS)} or a CSV file; got {self.dataset!r}"
            )
        if self.csv_path is not None and not self.target:
            raise ValueError("a CSV dataset needs a target column (--target)")
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got {self.task!r}")
        if self.missing not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {', '.join(MISSING_POLICIES)}; got {self.missing!r}")
        if self.categorical not in CATEGORICAL_POLICIES:
            raise ValueError(
                f"categorical must be one of {', '.join(CATEGORICAL_POLICIES)}; got {self.categorical!r}"
            )
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be a finite number >= 0; got {self.noise}")
        if isinstance(self.seq_length, bool) or not isinstance(self.seq_length, int) or not (
            MIN_SEQ_LENGTH <= self.seq_length <= MAX_SEQ_LENGTH
        ):
            raise ValueError(f"seq_length must be an integer in [{MIN_SEQ_LENGTH}, {MAX_SEQ_LENGTH}];"
                             f" got {self.seq_length!r}")
        if self.synthetic_activation not in SYNTHETIC_ACTIVATIONS:
            raise ValueError(
                f"synthetic_activation must be one of {', '.join(SYNTHETIC_ACTIVATIONS)};"
                f" got {self.synthetic_activation!r}"
            )

    def load(self) -> Dataset:
        dataset = self._load_rows()
        return with_image_shape(dataset, self.image_shape) if self.image_shape else dataset

    def _load_rows(self) -> Dataset:
        if self.csv_path is not None:
            assert self.target is not None
            return load_csv(
                self.csv_path,
                self.target,
                task=self.task,
                missing=self.missing,
                categorical=self.categorical,
                name=Path(self.csv_path).stem,
            )
        return load_builtin(
            self.dataset,
            seed=self.seed,
            n_samples=self.n_samples,
            n_features=self.n_features,
            activation=self.synthetic_activation,
            noise=self.noise,
            seq_length=self.seq_length,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d
