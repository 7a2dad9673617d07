import numpy as np
import pytest
from sklearn.linear_model import Ridge

from mimir.learn.baseline import BaselineConfig, BaselineError, RidgeCrossval, _Statistics, fit_ridge, image_features, pool_image

FOLDS = 5


def linear_problem(n=150, d=12, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(0, 1, (n, d)) * rng.uniform(0.5, 20, d) + rng.uniform(-50, 50, d)
    weights = rng.normal(0, 1, d) / features.std(axis=0)
    clean = features @ weights
    return features.astype(np.float32), clean + noise * clean.std() * rng.normal(size=n), np.arange(n) % FOLDS


def out_of_fold(ridge: RidgeCrossval) -> tuple[np.ndarray, np.ndarray]:
    predictions = np.full(ridge.values.shape, np.nan)
    alphas = []
    for fold in range(FOLDS):
        result = ridge.predict_fold(fold)
        predictions[result.rows] = result.predictions
        alphas.append(result.alphas)
    return predictions, np.array(alphas)


def test_pool_image_averages_blocks():
    image = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    pooled = pool_image(image, 2)
    assert pooled.shape == (2, 2, 2)
    assert pooled[1, 0, 1] == pytest.approx(image[1, 0:2, 2:4].mean())


def test_image_features_read_the_cache(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (3, 256, 256), dtype=np.uint8)
    np.save(tmp_path / "a.npy", image)
    features = image_features([tmp_path / "a.npy"], 8)
    assert features.shape == (1, 3 * 8 * 8) and features.dtype == np.float32
    assert features[0, 0] == pytest.approx(image[0, :32, :32].mean(), rel=1e-6)


def test_fit_matches_scikit_learn_ridge_on_standardised_features():
    features, y, _ = linear_problem(n=60, d=8, noise=0.5)
    alpha = 0.3
    fit = fit_ridge(_Statistics.of(features, y[:, None]), [alpha])
    # Standardised with the sample sd, penalty alpha * n: scikit-learn's Ridge on the same inputs.
    x = features.astype(np.float64)
    standardised = (x - x.mean(axis=0)) / x.std(axis=0, ddof=1)
    expected = Ridge(alpha=alpha * len(y)).fit(standardised, y).predict(standardised)
    np.testing.assert_allclose(fit.predict(features)[:, 0, 0], expected, rtol=1e-6, atol=1e-8)


def test_ridge_beats_the_mean_on_a_linear_problem():
    features, y, fold = linear_problem()
    predictions, _ = out_of_fold(RidgeCrossval(features, y[:, None], fold, FOLDS, BaselineConfig(size=8)))
    mean_predictor = np.array([y[fold != k].mean() for k in fold])
    ridge_error = np.mean((predictions[:, 0] - y) ** 2)
    assert ridge_error < 0.1 * np.mean((mean_predictor - y) ** 2)


def test_inner_cross_validation_picks_strong_penalty_for_noise_and_weak_for_signal():
    features, y, fold = linear_problem(noise=0.01)
    noise = np.random.default_rng(5).normal(size=len(y))
    config = BaselineConfig(size=8, alphas=(1e-4, 1e-2, 1.0, 100.0))
    _, alphas = out_of_fold(RidgeCrossval(features, np.column_stack([y, noise]), fold, FOLDS, config))
    assert np.all(alphas[:, 0] <= 1e-2)
    assert np.all(alphas[:, 1] >= 1.0)


def test_missing_values_train_on_known_exams_and_predict_every_exam():
    features, y, fold = linear_problem(n=100)
    partly = y.copy()
    partly[::3] = np.nan
    ridge = RidgeCrossval(features, np.column_stack([y, partly]), fold, FOLDS, BaselineConfig(size=8))
    assert len(ridge.groups) == 2
    predictions, _ = out_of_fold(ridge)
    assert np.isfinite(predictions).all()
    known = ~np.isnan(partly)
    assert np.corrcoef(predictions[known, 1], y[known])[0, 1] > 0.95
    lonely = np.full(len(y), np.nan)
    lonely[0] = 1.0  # one known value: nothing to fit
    predictions, _ = out_of_fold(RidgeCrossval(features, lonely[:, None], fold, FOLDS, BaselineConfig(size=8)))
    assert np.isnan(predictions).all()


@pytest.mark.parametrize("changes", [{"size": 30}, {"alphas": (1.0, 0.0)}, {"inner_folds": 1}])
def test_invalid_settings_are_rejected(changes):
    with pytest.raises(BaselineError):
        BaselineConfig(**changes)
