"""tf.Transform: fitting with analyzers, fixed statistics, and a hermetic exported SavedModel."""

from __future__ import annotations

import pathlib
import shutil

import apache_beam as beam
import keras
import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from transforms.features import clip_bounds
from transforms.preprocess import (
    FitTransform,
    ServingModel,
    crop_bounds,
    examples_to_record_batch,
    export_serving_model,
    make_preprocessing_fn,
    model_input_map,
    preprocess_stamps,
    preprocessing_fn,
)
from transforms.schema import (
    CLASS_NAMES,
    FEATURES_ALERCE_26,
    FEATURES_PRODUCTION,
    RAW_FEATURES_KEY,
    RAW_STAMPS_KEY,
    SERVING_OUTPUT_KEY,
    TRANSFORMED_FEATURES_KEY,
    TRANSFORMED_STAMPS_KEY,
)

N_EXAMPLES = 240
SEEDS = 4  # examples are generated in workers from seeds: beam.Create with arrays is slow


def make_examples(seed: int, n: int = N_EXAMPLES // SEEDS, n_features: int = 23) -> list[dict]:
    """Raw model inputs with values beyond the clip bounds and NaN pixels."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        features = rng.normal(0, 1, n_features) * rng.choice([1, 100, 5000], n_features)
        stamps = rng.normal(100, 10, (63, 63, 3))
        stamps[rng.random((63, 63, 3)) < 0.05] = np.nan
        out.append(
            {RAW_FEATURES_KEY: features.astype(np.float32), RAW_STAMPS_KEY: stamps.astype("f4")}
        )
    return out


def all_examples(n_features: int = 23) -> list[dict]:
    return [e for s in range(SEEDS) for e in make_examples(s, n_features=n_features)]


def _rows_and_mean(rb: pa.RecordBatch) -> tuple[int, np.ndarray, float, float]:
    f = np.asarray(rb.column(TRANSFORMED_FEATURES_KEY).values).reshape(rb.num_rows, -1)
    s = np.asarray(rb.column(TRANSFORMED_STAMPS_KEY).values)
    return rb.num_rows, f.sum(axis=0), float(s.min()), float(s.max())


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Fit the 23-feature transform with analyzers, checking the transformed training set."""
    out = tmp_path_factory.mktemp("tft") / "transform"
    with beam.Pipeline(runner=FnApiRunner()) as p:
        examples = p | beam.Create(range(SEEDS)) | beam.FlatMap(make_examples)
        transformed, _ = examples | FitTransform(
            FEATURES_PRODUCTION, str(out), temp_dir=str(out.parent / "tmp"), batch_size=64
        )
        summary = (
            transformed
            | beam.Map(_rows_and_mean)
            | beam.CombineGlobally(
                lambda parts: (
                    sum(p[0] for p in parts),
                    bool(np.all(np.abs(sum(p[1] for p in parts)) < 1e-2 * N_EXAMPLES)),
                    min((p[2] for p in parts), default=0.0) >= 0.0,
                    max((p[3] for p in parts), default=1.0) <= 1.0,
                )
            )
        )
        # Every row comes out, z-scored features average to ~0, stamps land in [0, 1].
        assert_that(summary, equal_to([(N_EXAMPLES, True, True, True)]))
    return out


def reference_transform(examples: list[dict], mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    lo, hi = clip_bounds(FEATURES_PRODUCTION)
    x = np.clip(np.stack([e[RAW_FEATURES_KEY] for e in examples]).astype(np.float64), lo, hi)
    return (x - mean) / std


def test_fit_with_analyzers_matches_numpy(fitted: pathlib.Path) -> None:
    examples = all_examples()
    tft_output = tft.TFTransformOutput(str(fitted))
    raw = examples[:32]
    got = tft_output.transform_raw_features(
        {
            RAW_FEATURES_KEY: tf.constant(np.stack([e[RAW_FEATURES_KEY] for e in raw])),
            RAW_STAMPS_KEY: tf.constant(np.stack([e[RAW_STAMPS_KEY] for e in raw])),
        }
    )
    lo, hi = clip_bounds(FEATURES_PRODUCTION)
    clipped = np.clip(np.stack([e[RAW_FEATURES_KEY] for e in examples]).astype(np.float64), lo, hi)
    mean, std = clipped.mean(axis=0), clipped.std(axis=0)  # population std, as tft.var
    want = reference_transform(raw, mean, std)
    np.testing.assert_allclose(got[TRANSFORMED_FEATURES_KEY].numpy(), want, atol=1e-4, rtol=1e-4)
    stamps = np.stack([e[RAW_STAMPS_KEY] for e in raw])
    np.testing.assert_array_equal(
        got[TRANSFORMED_STAMPS_KEY].numpy(), preprocess_stamps(tf.constant(stamps)).numpy()
    )


def test_default_preprocessing_fn_is_module_level_and_analyzes_features_only() -> None:
    specs = {
        RAW_FEATURES_KEY: tf.TensorSpec([None, 23], tf.float32),
        RAW_STAMPS_KEY: tf.TensorSpec([None, 63, 63, 3], tf.float32),
    }
    # Stamps need no analyzer: only the feature vector is read during analysis.
    assert tft.get_analyze_input_columns(preprocessing_fn, specs) == [RAW_FEATURES_KEY]
    assert sorted(tft.get_transform_input_columns(preprocessing_fn, specs)) == sorted(specs)


def _tiny_model(n_features: int, crop: int = 21, with_features: bool = True) -> keras.Model:
    """Named like model.network.build_network: inputs ``stamps`` and (optionally) ``features``."""
    stamps = keras.Input((crop, crop, 3), name=RAW_STAMPS_KEY)
    x = keras.layers.Conv2D(4, 3, activation="relu")(stamps)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if not with_features:
        return keras.Model({RAW_STAMPS_KEY: stamps}, keras.layers.Dense(5, "softmax")(x))
    features = keras.Input((n_features,), name=RAW_FEATURES_KEY)
    x = keras.layers.Concatenate()([x, features])
    probs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax")(x)
    return keras.Model({RAW_STAMPS_KEY: stamps, RAW_FEATURES_KEY: features}, probs)


def test_exported_model_is_hermetic(fitted: pathlib.Path, tmp_path: pathlib.Path) -> None:
    transform_dir = tmp_path / "transform"
    shutil.copytree(fitted, transform_dir)
    keras.utils.set_random_seed(7)
    model = _tiny_model(23)
    raw = all_examples()[:16]
    features = np.stack([e[RAW_FEATURES_KEY] for e in raw])
    stamps = np.stack([e[RAW_STAMPS_KEY] for e in raw])
    transformed = tft.TFTransformOutput(str(transform_dir)).transform_raw_features(
        {RAW_FEATURES_KEY: tf.constant(features), RAW_STAMPS_KEY: tf.constant(stamps)}
    )
    expected = model(
        {
            RAW_FEATURES_KEY: transformed[TRANSFORMED_FEATURES_KEY],
            RAW_STAMPS_KEY: transformed[TRANSFORMED_STAMPS_KEY],
        }
    ).numpy()

    export_dir = tmp_path / "saved_model"
    module = export_serving_model(model, str(transform_dir), str(export_dir), n_features=23)
    in_process = module.serve(features, stamps)[SERVING_OUTPUT_KEY].numpy()
    del module
    shutil.rmtree(transform_dir)  # the export must not need it any more

    loaded = tf.saved_model.load(str(export_dir))
    served = loaded.signatures["serving_default"](
        features=tf.constant(features), stamps=tf.constant(stamps)
    )[SERVING_OUTPUT_KEY].numpy()
    direct = loaded.serve(features, stamps)[SERVING_OUTPUT_KEY].numpy()
    assert served.shape == (16, len(CLASS_NAMES))
    np.testing.assert_array_equal(served, in_process)
    np.testing.assert_array_equal(direct, in_process)
    np.testing.assert_allclose(served, expected, atol=1e-6)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-5)


def test_images_only_model_gets_only_stamps(fitted: pathlib.Path) -> None:
    assert model_input_map(_tiny_model(23, with_features=False)) == {
        RAW_STAMPS_KEY: TRANSFORMED_STAMPS_KEY
    }
    module = ServingModel(_tiny_model(23, with_features=False), str(fitted), n_features=23)
    raw = all_examples()[:4]
    out = module.serve(
        np.stack([e[RAW_FEATURES_KEY] for e in raw]), np.stack([e[RAW_STAMPS_KEY] for e in raw])
    )[SERVING_OUTPUT_KEY]
    assert out.shape == (4, len(CLASS_NAMES))
    with pytest.raises(ValueError, match="cannot map"):
        model_input_map(keras.Sequential([keras.Input((3,), name="pixels"), keras.layers.Dense(5)]))


def test_fixed_alerce_stats_in_beam_equal_direct_call(tmp_path: pathlib.Path) -> None:
    rng = np.random.default_rng(3)
    stats = {n: {"mean": float(rng.normal()), "std": float(rng.uniform(0.5, 2))} for n in
             FEATURES_ALERCE_26}  # fmt: skip
    stats["isdiffpos"]["mean"] = 0.0
    out = tmp_path / "transform"
    with beam.Pipeline(runner=FnApiRunner()) as p:
        examples = p | beam.Create([0]) | beam.FlatMap(make_examples, n=20, n_features=26)
        _ = examples | FitTransform(
            FEATURES_ALERCE_26, str(out), stats=stats, crop=41, temp_dir=str(tmp_path / "tmp")
        )
    raw = make_examples(0, n=20, n_features=26)
    inputs = {
        RAW_FEATURES_KEY: tf.constant(np.stack([e[RAW_FEATURES_KEY] for e in raw])),
        RAW_STAMPS_KEY: tf.constant(np.stack([e[RAW_STAMPS_KEY] for e in raw])),
    }
    got = tft.TFTransformOutput(str(out)).transform_raw_features(inputs)
    want = make_preprocessing_fn(FEATURES_ALERCE_26, stats=stats, crop=41)(inputs)
    for key in (TRANSFORMED_FEATURES_KEY, TRANSFORMED_STAMPS_KEY):
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-6, atol=1e-6)
    assert got[TRANSFORMED_STAMPS_KEY].shape == (20, 41, 41, 3)


def test_record_batch_packing_checks_shapes() -> None:
    examples = make_examples(0, n=3)
    rb = examples_to_record_batch(examples, 23)
    assert rb.num_rows == 3
    np.testing.assert_array_equal(
        np.asarray(rb.column(RAW_STAMPS_KEY).values).reshape(3, 63, 63, 3)[1],
        examples[1][RAW_STAMPS_KEY],
    )
    with pytest.raises(ValueError, match="expected"):
        examples_to_record_batch(examples, 26)


@pytest.mark.parametrize(("crop", "bounds"), [(21, (21, 42)), (41, (11, 52)), (63, (0, 63))])
def test_crop_bounds(crop: int, bounds: tuple[int, int]) -> None:
    assert crop_bounds(crop) == bounds
