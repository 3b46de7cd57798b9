"""stampflow pipelines: ZTF alerts in, first-detection class probabilities out.

The data flow, one composite PTransform per stage, one stage per module of :mod:`transforms`::

    ReadAlerts (transforms.ingest)        files / dirs / globs / tar.gz / gs://  → Alert
      └─ DecodeCutouts (transforms.cutouts)  gzipped FITS → float32 stamps
           └─ featurise (transforms.featurize)   23 metadata features + 63×63×3 stamps
                └─ RunInference                  tf.Transform graph + CNN SavedModel
                     └─ rules, sinks             probabilities, sky density, SN candidates
    every stage ──▶ dead letters {stage, reason, source, raw bytes}, counted

Jobs (``stampflow COMMAND``, see :mod:`pipeline.cli`):

* ``decode``: the read → decode → stamps stages with a reconciled summary (no model).
* ``simulate`` / ``montage``: realistic labelled ZTF alerts, and pictures of them.

Local runs name their runner (``FnApiRunner``), so nothing is downloaded; on Dataflow add
``--runner DataflowRunner --project P --region R --temp_location gs://B/tmp``
``--setup_file ./setup.py``.
"""
