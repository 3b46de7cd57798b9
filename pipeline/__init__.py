"""stampflow pipelines: ZTF alerts in, first-detection class probabilities out.

The data flow of ``stampflow run`` (:mod:`pipeline.run_job`), one composite PTransform per stage,
one stage per module of :mod:`transforms`::

    ReadAlerts (transforms.ingest)          files / dirs / globs / tar.gz / gs://  → Alert
      └─ SelectFirstDetections (transforms.selection)   history check, earliest per object
                                                         (ids shuffled, winners read again)
           └─ Featurize (transforms.featurize)            23 features + raw 63×63×3 stamps
                └─ Classify: RunInference (model.handler)   tf.Transform graph + CNN SavedModel
                     └─ ApplyRules (transforms.rules)         ALeRCE's rules, rule column
                          └─ sinks: probabilities, sky density (transforms.density),
                                    SN candidates (pipeline.reports), BigQuery (pipeline.bigquery)
    every stage ──▶ dead letters {stage, reason, source, raw bytes}, counted; summary reconciled

Streaming (:mod:`pipeline.streaming`) runs the same stages on Pub/Sub with stateful selection
(:mod:`transforms.streaming_state`). Other jobs (``stampflow COMMAND``, see :mod:`pipeline.cli`):
``train``/``evaluate`` (:mod:`model.train`), ``import-alerce`` (:mod:`model.alerce`),
``simulate``/``montage`` (:mod:`simulator`), ``publish``, ``decode``, ``bench``.

Local runs name their runner (``FnApiRunner``), so nothing is downloaded; on Dataflow add
``--runner DataflowRunner --project P --region R --temp_location gs://B/tmp``
``--setup_file ./setup.py``.
"""
