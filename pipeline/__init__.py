"""stampflow pipelines: ZTF and Rubin alerts in, first-detection class probabilities out.

``stampflow run`` (:mod:`pipeline.run_job`) is one chain of labelled composites, the same stages
in batch and streaming, one stage per module::

    ReadAlerts              transforms.ingest (files, archives, gs://) | pipeline.pubsub (Pub/Sub);
                            Avro, Parquet, wire format (transforms.alerts, .parquet, .wire),
                            each packet's survey from its schema (transforms.surveys: ztf, lsst)
      └─ SelectFirstDetections   transforms.selection | transforms.streaming_state
           └─ [RouteBySurvey]       one branch per survey with a --model (transforms.featurize)
           └─ Featurize             transforms.featurize (ZTF: 23-27 features + raw 63×63×3
                                    stamps; Rubin: 23 features + 30×30×3 stamps)
                └─ Classify            pipeline.classify (RunInference, model.handler)
                     └─ ApplyRules        pipeline.classify (ALeRCE's rules, transforms.rules)
                          └─ SkyDensity      transforms.density (per night) | per window
                               └─ WriteOutputs  pipeline.sinks: Parquet, SN page | topics;
                                                BigQuery (pipeline.bigquery); refused rows
                                                come back as dead letters
    every stage ──▶ CollectDeadLetters ─ WriteDeadLetters   {stage, reason, source, raw bytes}
    every record ─▶ CountOutcomes (pipeline.summary) ─▶ summary.json, reconciled

Options are parsed and validated once into a frozen :class:`pipeline.options.RunOptions`; a
user's mistake is one line and exit status 2 (:mod:`pipeline.errors`). Other jobs (``stampflow
COMMAND``, see :mod:`pipeline.cli`): ``train``/``evaluate`` (:mod:`model.train`),
``import-alerce`` (:mod:`model.alerce`), ``compare``, ``label``, ``gap``,
``simulate``/``montage`` (:mod:`simulator`), ``publish``, ``decode``, ``bench``.

Local runs name their runner (``FnApiRunner``, or ``BundleBasedDirectRunner`` for streaming), so
nothing is downloaded; on Dataflow add ``--runner DataflowRunner --project P --region R``
``--temp_location gs://B/tmp --setup_file ./setup.py``.
"""
