"""ALeRCE's own TF1 graph, run as ALeRCE runs it: the reference for parity tests and benchmarks.

The graph is restored with ``tf.compat.v1.train.import_meta_graph`` and fed the tensors named in
``../shared/data/alerce/MANIFEST``: ``inputs/IteratorGetNext:0`` takes the images with their four
rotations stacked along the batch axis (``[4N, 21, 21, 3]``), ``inputs/IteratorGetNext:1`` the
standardised features ``[N, F]`` (absent for the images-only model),
``inputs/training_flag:0 = False``; ``outputs/Softmax:0`` is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1


def rotations(stamps: np.ndarray) -> np.ndarray:
    """``[N, H, W, C]`` → ``[4N, H, W, C]``: the batch and its 90°, 180°, 270° rotations."""
    return np.concatenate([np.rot90(stamps, k, axes=(1, 2)) for k in range(4)])


class AlerceGraph:
    """A restored ALeRCE TF1 graph in its own session.

    Parameters
    ----------
    meta
        The ``model.meta`` file.
    checkpoint
        Checkpoint prefix whose variables to restore; None initialises them randomly with
        ``seed`` (for the production graph, whose weights are not published).
    seed
        Graph-level seed for the random initialisation.
    """

    def __init__(self, meta: str | Path, checkpoint: str | None = None, seed: int = 0) -> None:
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf1.set_random_seed(seed)
            self.saver = tf1.train.import_meta_graph(str(meta))
            self.session = tf1.Session(graph=self.graph)
            if checkpoint is None:
                self.session.run(tf1.global_variables_initializer())
            else:
                self.saver.restore(self.session, checkpoint)
        names = {o.name for o in self.graph.get_operations()}
        n_outputs = len(self.graph.get_operation_by_name("inputs/IteratorGetNext").outputs)
        self.has_features = n_outputs == 3
        assert "outputs/Softmax" in names

    def save(self, prefix: str | Path) -> str:
        """Write the current variables as a checkpoint; returns its prefix."""
        with self.graph.as_default():
            return self.saver.save(self.session, str(prefix))

    def predict(self, stamps: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities for preprocessed stamps ``[N, 21, 21, 3]`` and z-scored features.

        Parameters
        ----------
        stamps
            Preprocessed stamps (crop, min-max, NaN → 0 already applied).
        features
            Clipped, standardised features ``[N, F]``; ignored by the images-only graph.

        Returns
        -------
        numpy.ndarray
            ``[N, 5]`` softmax probabilities.
        """
        feed = {
            "inputs/IteratorGetNext:0": rotations(stamps.astype(np.float32)),
            "inputs/training_flag:0": False,
        }
        if self.has_features:
            feed["inputs/IteratorGetNext:1"] = features.astype(np.float32)
        return self.session.run("outputs/Softmax:0", feed)

    def close(self) -> None:
        """Release the session."""
        self.session.close()
