import json
import math

import numpy as np
import pytest

from mimir.runs.standardization import Standardization, StandardizationError, read_standardization


def test_standardization_inverts_to_catalog_units():
    values = np.array([[1.0, np.nan], [3.0, 10.0], [5.0, np.nan]])
    standardization = Standardization.fit("m", ("a", "b"), values)
    assert standardization.mean.tolist() == [3.0, 10.0]
    assert standardization.sd.tolist() == [2.0, 1.0]
    mean, sd = standardization.invert(np.array([[1.0, 0.0]]), np.array([[math.log(4.0), 0.0]]))
    assert mean.tolist() == [[5.0, 10.0]]
    assert sd.tolist() == [[4.0, 1.0]]


def test_targets_without_training_values_predict_nan():
    standardization = Standardization.fit("m", ("a", "b"), np.array([[1.0, np.nan], [3.0, np.nan]]))
    assert standardization.n_train.tolist() == [2, 0]
    mean, sd = standardization.invert(np.zeros((1, 2)), np.zeros((1, 2)))
    assert math.isnan(mean[0, 1]) and math.isnan(sd[0, 1]) and mean[0, 0] == 2.0


def test_read_back_what_was_written(tmp_path):
    written = Standardization.fit("m", ("a", "b"), np.array([[1.0, 4.0], [3.0, 8.0]]))
    path = tmp_path / "standardization.json"
    path.write_text(written.to_json())
    read = read_standardization(path)
    assert read.to_json() == written.to_json() and read.targets == ("a", "b")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"module": "m", "targets": ["a"], "mean": [0.0], "sd": [1.0]}), "n_train"),
        (json.dumps({"module": "m", "targets": ["a", "b"], "mean": [0.0], "sd": [1.0], "n_train": [3]}), "one length"),
        (json.dumps({"module": "m", "targets": [], "mean": [], "sd": [], "n_train": []}), "non-empty"),
    ],
)
def test_a_malformed_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "standardization.json"
    path.write_text(content)
    with pytest.raises(StandardizationError, match=message) as caught:
        read_standardization(path)
    assert str(path) in str(caught.value)


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_standardization(tmp_path / "standardization.json")
