"""stampflow: first-detection classification of ZTF alerts with Apache Beam.

One root ``setup.py`` so Dataflow workers can install the job with ``--setup_file ./setup.py``.
The runtime pins are the set that resolves together on Python 3.11 (SPEC §11).
"""

from pathlib import Path

from setuptools import setup

RUNTIME = [
    "apache-beam[gcp]==2.78.0",
    "tensorflow==2.21.0",
    "tensorflow-transform==1.21.0",
    "tfx-bsl==1.21.0",
    "tensorflow-hub==0.16.1",  # imported by Beam's TensorFlow model handler; 0.15 breaks
    "fastavro==1.13.1",
    "numpy==2.4.6",
    "google-cloud-bigquery==3.47.0",
    "astropy>=7.0,<9",
    "astropy-healpix>=1.1,<3",
    "pyarrow>=18",
    "matplotlib>=3.9,<4",
    # Inflates cutouts ~2x faster than zlib (ISA-L); transforms.stamps falls back to zlib.
    "isal==1.9.1",
    # --runtime onnx and `stampflow export-onnx` (tf2onnx 1.17 resolves with TF 2.21, protobuf 6,
    # numpy 2). GPU: replace onnxruntime by onnxruntime-gpu of the same version (both install
    # the same `onnxruntime` package, so they cannot sit side by side in one extra).
    "onnxruntime==1.32.0",
    "onnx==1.23.2",
    "tf2onnx==1.17.0",
]

setup(
    name="stampflow",
    version="0.1.0",
    description="ZTF alert stamp classifier (ALeRCE-compatible) as an Apache Beam job",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.12",
    packages=["pipeline", "transforms", "transforms.surveys", "model", "simulator", "bench"],
    package_data={
        "simulator": ["schema/*.avsc"],
        "model": ["default/**/*", "default_lsst/**/*"],
        "pipeline": ["assets/*"],
    },
    include_package_data=True,
    install_requires=RUNTIME,
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "ruff>=0.6",
            # The SN page's tests drive Debian's chromium (scripts/ensure_venv.sh installs it).
            "playwright==1.65.2",
            # BigQuery emulator for the sink tests (offline: DuckDB extensions from PyPI).
            "bqemulator==1.4.0",
            "duckdb==1.5.5",
            "duckdb-extension-spatial==1.5.5",
            "duckdb-extension-avro==1.5.5",
            # GCS emulator for the gs:// tests (pure Python; answers Beam's batch requests).
            "gcp-storage-emulator==2026.7.19",
        ],
        # TensorFlow's CUDA wheels for GPU workers (Linux x86_64 only).
        "gpu": ["tensorflow[and-cuda]==2.21.0"],
    },
    entry_points={"console_scripts": ["stampflow=pipeline.cli:main"]},
)
