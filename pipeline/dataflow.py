"""A Dataflow job request built and staged, without submitting it (``--dry_run True``).

Beam's ``DataflowRunner`` with ``--dry_run True`` translates the pipeline (the runner's own
checks, the sdist built from ``--setup_file``) and stops before it stages anything or describes the
workers. :func:`job_request` goes one step further with Beam's own client: it stages the
artifacts (the sdist as ``workflow.tar.gz``, the pipeline proto) to ``--temp_location`` /
``--staging_location`` and builds the complete request (worker pools, machine type, service
options, experiments, container image), then stops; only ``projects.locations.jobs.create`` is
left out. Against a GCS emulator it runs offline; ``stampflow run --runner DataflowRunner
--dry_run True`` writes the request to ``<output>/dataflow_job.json`` (streaming: beside the staged
artifacts) and prints where.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import TestOptions

from pipeline.options import OptionsError, RunOptions

__all__ = [
    "JOB_REQUEST_FILE",
    "JobRequest",
    "is_dry_run",
    "job_request",
    "new_pipeline",
    "write_job_request",
]

#: Where ``stampflow run --dry_run True`` writes the request, in ``--output``.
JOB_REQUEST_FILE = "dataflow_job.json"


@dataclass(frozen=True)
class JobRequest:
    """A Dataflow job request, staged but not submitted.

    Attributes
    ----------
    job
        The ``projects.locations.jobs.create`` body (Beam's ``Job.json()``), as a dict.
    transforms
        Unique names of the pipeline's top-level transforms (our stages).
    staged
        ``gs://`` paths of the staged artifacts (``workflow.tar.gz`` is the sdist).
    staging
        The staging directory they are in.
    """

    job: dict[str, Any]
    transforms: tuple[str, ...]
    staged: tuple[str, ...]
    staging: str


def new_pipeline(opts: RunOptions) -> beam.Pipeline:
    """A pipeline with ``opts``' Beam options; Beam's refusal of them is a user's mistake.

    Raises
    ------
    OptionsError
        When Beam's validation refuses the options (``DataflowRunner`` without
        ``--temp_location``, a project name that is no project id...), in one line.
    """
    try:
        return beam.Pipeline(options=opts.pipeline_options())
    except ValueError as e:  # "Pipeline has validations errors: \n<one line per error>"
        why = "; ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip())
        raise OptionsError(f"Beam options refused: {why or e}") from None


def is_dry_run(opts: RunOptions) -> bool:
    """True for ``--runner DataflowRunner --dry_run True``."""
    return opts.runner == "DataflowRunner" and bool(
        opts.pipeline_options().view_as(TestOptions).dry_run
    )


def job_request(opts: RunOptions, build: Callable[[beam.Pipeline, RunOptions], Any]) -> JobRequest:
    """Build the pipeline for ``opts``, stage it and describe the Dataflow job; submit nothing.

    Parameters
    ----------
    opts
        Options with ``runner == "DataflowRunner"`` and ``--dry_run True`` among the Beam
        arguments, plus what Dataflow needs (``--project``, ``--region``, ``--temp_location``).
    build
        Adds the job to a pipeline (:func:`pipeline.run_job.build`; passed in, so this module
        does not import the job that imports it).

    Returns
    -------
    JobRequest
    """
    from apache_beam.runners.dataflow.internal.apiclient import DataflowApplicationClient

    if not is_dry_run(opts):
        raise ValueError("job_request wants --runner DataflowRunner --dry_run True")
    p = new_pipeline(opts)
    build(p, opts)
    job = p.run().job  # the dry run returns the translated job, nothing staged yet
    # What DataflowApplicationClient.create_job does before it submits: stage, describe.
    DataflowApplicationClient(job.options, job.root_staging_location).create_job_description(job)
    staging = job.google_cloud_options.staging_location
    staged = FileSystems.match([FileSystems.join(staging, "*")])[0].metadata_list
    top = [
        t.unique_name
        for t in job.proto_pipeline.components.transforms.values()
        if "/" not in t.unique_name and not t.unique_name.startswith("ref_")
    ]
    paths = tuple(m.path for m in staged)
    return JobRequest(json.loads(job.json()), tuple(sorted(top)), paths, staging)


def write_job_request(
    opts: RunOptions, build: Callable[[beam.Pipeline, RunOptions], Any]
) -> dict[str, Any]:
    """``stampflow run --dry_run True``: stage, write the request to ``--output``, report it.

    Returns
    -------
    dict
        ``dry_run``: the request's path; ``job_name``, ``transforms``, ``staged``.
    """
    request = job_request(opts, build)
    # A streaming job has no --output: the request goes beside the staged artifacts.
    where = opts.output or request.staging
    path = FileSystems.join(where, JOB_REQUEST_FILE)
    with FileSystems.create(path) as f:
        f.write(json.dumps(request.job, indent=2).encode())
    return {
        "dry_run": path,
        "job_name": request.job["name"],
        "transforms": list(request.transforms),
        "staged": list(request.staged),
    }
