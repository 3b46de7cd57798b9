"""The stamp classifier network of Carrasco-Davis et al. (2021), Table 2, in Keras.

Input: preprocessed stamps ``[N, crop, crop, 3]`` (science, template, difference; see
:mod:`transforms.preprocess`) and standardised metadata ``[N, F]``::

    stamps ─ ZeroPad 3 ─ RotationExtend [x, r x, r² x, r³ x] (batch ×4)
      ─ conv 4×4, 32, valid ─ conv k×k, 32 ─ maxpool 2 ─ conv k×k, 64 ×3 ─ maxpool 2
      ─ flatten ─ dense 64 ─ dropout ─ CyclicAveragePool (batch ÷4, mean over the rotations)
    features ─ BatchNorm ─┐
      concat ─ dense 64 ─ dropout ─ dense 64 ─ dense 5 ─ softmax (AGN, SN, VS, asteroid, bogus)

Averaging the dense-64 embedding over the four 90° rotations makes the output exactly invariant
to rotating the input stamps by 90°. With ``NetworkConfig(flips=True)`` (the Rubin model's
default) the batch is extended with the mirror images too, ``[x, r x, r² x, r³ x, m, r m, r² m,
r³ m]`` with ``m`` the left-right mirror of ``x`` (×8), and the embedding averaged over the eight:
the orbit of ``x`` under the dihedral group D4, so the output is exactly invariant to every
rotation by 90° and every flip. Rubin stamps come in each visit's orientation (its rotator angle),
so orientation says nothing about the class, and neither does handedness; ALeRCE's Rubin model
averages the same 8 views. No weight is added. Layer names follow ALeRCE's TF1 variable scopes
(``conv_1_1``, ``dense_1_10``, ``batchnorm_features``, ...) so imported checkpoints map 1:1.
The images-only variant (their Appendix C) drops the metadata branch and, as ALeRCE's graph does,
pools later: ``dense 64 ─ dense 64 ─ CyclicAveragePool ─ dense 5``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
import tensorflow as tf

from transforms.schema import CLASS_NAMES

#: Variable-scope names of ALeRCE's TF1 graphs, by role. The dense layers' numeric suffixes differ
#: between the metadata and images-only graphs.
LAYER_NAMES = {
    "conv1": "conv_1_1",
    "conv2": "conv_2_2",
    "conv3": "conv_3_4",
    "conv4": "conv_4_5",
    "conv5": "conv_5_6",
    "dense1": "dense_1_10",
    "dense2": "dense_2_12",
    "dense3": "dense_3_13",
    "logits": "output_logits",
    "batchnorm": "batchnorm_features",
}
LAYER_NAMES_IMAGES_ONLY = {**LAYER_NAMES, "dense1": "dense_1_9", "dense2": "dense_2_10"}


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture hyper-parameters (SPEC §6; production: kernel 5, crop 21, 23 features).

    Attributes
    ----------
    kernel_size
        Side of the k×k convolutions after the first (3, 5 or 7).
    crop
        Side of the centre crop fed to the network [pixels] (21, 41 or 63).
    n_features
        Number of metadata features; 0 builds the images-only model.
    dropout
        Dropout rate used in training (after dense 1 and dense 2).
    padding
        Zero padding added on each side before the first convolution [pixels].
    flips
        Average over the 8 rotations and flips of the stamps (exact D4 invariance) instead of
        the 4 rotations; same weights. False (ZTF, ALeRCE) when a model's metadata lacks it.
    """

    kernel_size: int = 5
    crop: int = 21
    n_features: int = 23
    dropout: float = 0.5
    padding: int = 3
    flips: bool = False

    @property
    def views(self) -> int:
        """Copies of each stamp the network sees: 8 with flips, else 4."""
        return 8 if self.flips else 4

    def to_dict(self) -> dict:
        """Plain dict, for metadata JSON."""
        return asdict(self)


def rotate90(x: tf.Tensor, k: int) -> tf.Tensor:
    """Rotate a ``[N, H, W, C]`` batch by ``k`` × 90° counter-clockwise, without control flow.

    Parameters
    ----------
    x
        Images, ``[N, H, W, C]``.
    k
        Quarter turns, a Python int (0-3; taken modulo 4).

    Returns
    -------
    tf.Tensor
        ``np.rot90(x, k, axes=(1, 2))``: one transpose and/or reversal of fixed axes, so it
        exports to ONNX as ``Transpose``/``Slice`` nodes only.
    """
    k %= 4
    if k == 1:  # transpose, then flip the rows: the top row becomes the left column
        return tf.transpose(x, [0, 2, 1, 3])[:, ::-1]
    if k == 2:
        return x[:, ::-1, ::-1]
    if k == 3:  # transpose, then flip the columns
        return tf.transpose(x, [0, 2, 1, 3])[:, :, ::-1]
    return x


def mirror(x: tf.Tensor) -> tf.Tensor:
    """Flip a ``[N, H, W, C]`` batch left-right (``np.flip(x, axis=2)``): one reversal of a fixed
    axis, an ONNX ``Slice``."""
    return x[:, :, ::-1]


@keras.saving.register_keras_serializable(package="stampflow")
class RotationExtend(keras.layers.Layer):
    """``[N, H, W, C]`` → ``[4N, H, W, C]``: the batch followed by its 90°, 180°, 270° rotations.

    Rotations are counter-clockwise, as ``np.rot90(x, k, axes=(1, 2))`` and ``tf.image.rot90``
    (square stamps only). They are written as transposes and reversals (:func:`rotate90`) rather
    than ``tf.image.rot90``, whose tensor ``k`` becomes three ``If`` nodes in an ONNX export,
    which onnx2torch and TensorRT refuse; the pixels moved are the same, so the outputs are
    bit-identical.

    Parameters
    ----------
    flips
        Also append the four rotations of the mirrored batch (:func:`mirror`): ``[8N, H, W, C]``,
        the whole D4 orbit of each stamp, in blocks ``x, r x, r² x, r³ x, m, r m, r² m, r³ m``.
    """

    def __init__(self, flips: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.flips = bool(flips)

    def call(self, x):
        views = [x, *(rotate90(x, k) for k in (1, 2, 3))]
        if self.flips:
            m = mirror(x)
            views += [m, *(rotate90(m, k) for k in (1, 2, 3))]
        return tf.concat(views, 0)

    def compute_output_shape(self, input_shape):
        n = input_shape[0]
        views = 8 if self.flips else 4
        return (None if n is None else views * n, *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "flips": self.flips}


@keras.saving.register_keras_serializable(package="stampflow")
class CyclicAveragePool(keras.layers.Layer):
    """``[V·N, D]`` (``V`` blocks of views) → ``[N, D]``, the mean over the views.

    Parameters
    ----------
    views
        ``V``: 4 (the rotations) or 8 (rotations and flips, :class:`RotationExtend` ``flips``).
    """

    def __init__(self, views: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.views = int(views)

    def call(self, x):
        return tf.reduce_mean(tf.reshape(x, [self.views, -1, tf.shape(x)[-1]]), axis=0)

    def compute_output_shape(self, input_shape):
        n = input_shape[0]
        return (None if n is None else n // self.views, *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "views": self.views}


def build_network(
    config: NetworkConfig | None = None, dtype_policy: str | None = None
) -> keras.Model:
    """Build the classifier.

    Parameters
    ----------
    config
        Architecture; defaults to ALeRCE production (kernel 5, crop 21, 23 features, the four
        rotations).
    dtype_policy
        Keras dtype policy of the layers (``mixed_float16``, ``mixed_bfloat16``: float32
        weights, half-precision compute); None: Keras's global policy (float32). The softmax is
        float32 whatever the policy, so probabilities sum to 1 in float32.

    Returns
    -------
    keras.Model
        Inputs ``{"stamps": [N, crop, crop, 3], "features": [N, F]}`` (only ``stamps`` for the
        images-only model), output softmax probabilities ``[N, 5]`` in
        :data:`transforms.schema.CLASS_NAMES` order.
    """
    cfg = config or NetworkConfig()
    if dtype_policy is not None:
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(dtype_policy)
        try:
            return build_network(config)
        finally:
            keras.config.set_dtype_policy(previous)
    names = LAYER_NAMES if cfg.n_features else LAYER_NAMES_IMAGES_ONLY
    k = cfg.kernel_size
    stamps = keras.Input((cfg.crop, cfg.crop, 3), name="stamps")
    x = keras.layers.ZeroPadding2D(cfg.padding, name="zero_pad")(stamps)
    x = RotationExtend(flips=cfg.flips, name="rotations")(x)
    x = keras.layers.Conv2D(32, 4, padding="valid", activation="relu", name=names["conv1"])(x)
    x = keras.layers.Conv2D(32, k, padding="same", activation="relu", name=names["conv2"])(x)
    x = keras.layers.MaxPooling2D(2, name="pool_1")(x)
    for role in ("conv3", "conv4", "conv5"):
        x = keras.layers.Conv2D(64, k, padding="same", activation="relu", name=names[role])(x)
    x = keras.layers.MaxPooling2D(2, name="pool_2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name=names["dense1"])(x)
    x = keras.layers.Dropout(cfg.dropout, name="dropout_1")(x)
    inputs = {"stamps": stamps}
    if cfg.n_features:
        x = CyclicAveragePool(cfg.views, name="cyclic_pool")(x)
        features = keras.Input((cfg.n_features,), name="features")
        inputs["features"] = features
        f = keras.layers.BatchNormalization(epsilon=1e-3, momentum=0.99, name=names["batchnorm"])(
            features
        )
        x = keras.layers.Concatenate(name="concat")([x, f])
        x = keras.layers.Dense(64, activation="relu", name=names["dense2"])(x)
        x = keras.layers.Dropout(cfg.dropout, name="dropout_2")(x)
        x = keras.layers.Dense(64, activation="relu", name=names["dense3"])(x)
    else:
        # ALeRCE's images-only graph pools after its second dense layer.
        x = keras.layers.Dense(64, activation="relu", name=names["dense2"])(x)
        x = keras.layers.Dropout(cfg.dropout, name="dropout_2")(x)
        x = CyclicAveragePool(cfg.views, name="cyclic_pool")(x)
    logits = keras.layers.Dense(len(CLASS_NAMES), name=names["logits"])(x)
    probs = keras.layers.Softmax(name="probabilities", dtype="float32")(logits)
    name = "stamp_classifier" if cfg.n_features else "stamp_classifier_images_only"
    return keras.Model(inputs, probs, name=name)


def expected_parameter_count(config: NetworkConfig | None = None) -> int:
    """Parameters of :func:`build_network` from Table 2's arithmetic (weights + biases + BN).

    Parameters
    ----------
    config
        Architecture.

    Returns
    -------
    int
        Total parameter count, BatchNorm moving statistics included.
    """
    cfg = config or NetworkConfig()
    k = cfg.kernel_size

    def conv(kh: int, cin: int, cout: int) -> int:
        return kh * kh * cin * cout + cout

    side = cfg.crop + 2 * cfg.padding - 3  # 4×4 valid convolution
    flat = (side // 2 // 2) ** 2 * 64
    total = conv(4, 3, 32) + conv(k, 32, 32) + conv(k, 32, 64) + 2 * conv(k, 64, 64)
    total += flat * 64 + 64
    if cfg.n_features:
        total += 4 * cfg.n_features  # gamma, beta, moving mean, moving variance
        total += (64 + cfg.n_features) * 64 + 64 + 64 * 64 + 64
    else:
        total += 64 * 64 + 64
    return total + 64 * len(CLASS_NAMES) + len(CLASS_NAMES)


def entropy_regularized_loss(beta: float = 0.5):
    """Cross-entropy minus β·entropy, per sample (the paper's loss, β = 0.5 in production).

    ``L = −Σ_c y_c log ŷ_c + β Σ_c ŷ_c log ŷ_c``. The second term is minus the entropy of the
    prediction, so minimising L rewards less over-confident outputs.

    Parameters
    ----------
    beta
        Weight of the entropy term (0 gives plain cross-entropy).

    Returns
    -------
    callable
        ``loss(y_true_one_hot, y_pred) -> [N]`` per-sample losses.
    """

    def loss(y_true, y_pred):
        y_pred = tf.clip_by_value(tf.cast(y_pred, tf.float32), 1e-10, 1.0)
        y_true = tf.cast(y_true, tf.float32)
        log_p = tf.math.log(y_pred)
        cross_entropy = -tf.reduce_sum(y_true * log_p, axis=-1)
        neg_entropy = tf.reduce_sum(y_pred * log_p, axis=-1)
        return cross_entropy + beta * neg_entropy

    return loss
