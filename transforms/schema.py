"""The one module that owns every name: classes, feature keys, stamp kinds, dead-letter fields.

Everything downstream (features, model, sinks, BigQuery) imports names from here rather than
spelling them as string literals, so a rename happens in one place. Units are given in the
declarations.
"""

from __future__ import annotations

from typing import Final

#: Classes, in the order the network emits them (SPEC §6). Never reorder: imported weights rely
#: on it.
CLASS_NAMES: Final[tuple[str, ...]] = ("AGN", "SN", "VS", "asteroid", "bogus")

#: Alert fields holding the three cutouts, in the channel order the network stacks them
#: (science, template a.k.a. reference, difference).
STAMP_KINDS: Final[tuple[str, ...]] = ("science", "template", "difference")
CUTOUT_FIELDS: Final[dict[str, str]] = {
    "science": "cutoutScience",
    "template": "cutoutTemplate",
    "difference": "cutoutDifference",
}
#: Side of a full ZTF cutout [pixels] (1.01 arcsec/pixel).
STAMP_SIZE: Final[int] = 63

#: Top-level fields every ZTF alert record must have, whatever its schema version (1.8 to 4.02).
REQUIRED_ALERT_FIELDS: Final[tuple[str, ...]] = ("objectId", "candid", "candidate")
#: Candidate fields every ZTF alert must carry for us to place it in time and on the sky.
REQUIRED_CANDIDATE_FIELDS: Final[tuple[str, ...]] = (
    "jd",  # [day] Julian date of the exposure midpoint
    "ra",  # [deg] J2000
    "dec",  # [deg] J2000
    "fid",  # filter id: 1 g, 2 r, 3 i
)

# --- Surveys (transforms.surveys) -----------------------------------------------------------------
#: Survey names (``--survey``, the ``survey`` output column); ``auto`` decides per packet.
SURVEY_NAMES: Final[tuple[str, ...]] = ("ztf", "lsst")
SURVEY_AUTO: Final[str] = "auto"
#: ZTF filter id -> band name.
ZTF_BANDS: Final[dict[int, str]] = {1: "g", 2: "r", 3: "i"}
#: Rubin's six bands.
LSST_BANDS: Final[tuple[str, ...]] = ("u", "g", "r", "i", "z", "y")
#: TAI - UTC [s] since 2017-01-01 (Rubin times are TAI, ZTF's UTC).
TAI_MINUS_UTC: Final[float] = 37.0
#: Rubin alerts' magnitude zero point: m_AB = 31.4 - 2.5 log10(flux / nJy).
LSST_ZERO_POINT: Final[float] = 31.4  # [mag]
#: Rubin pixel scale [arcsec / pixel] (cutouts 0.1998-0.2001 measured from their WCS).
LSST_PIXEL_SCALE: Final[float] = 0.2
#: Side of the stamps an LSST model sees [pixels]: Rubin cutouts are max(bboxSize, 30) px square
#: with the source within 0.5 px of the centre; larger ones are centre-cropped to this (6").
LSST_STAMP_SIZE: Final[int] = 30
#: Effective wavelength of each Rubin band [nm] (the ``band_wavelength`` feature).
LSST_BAND_WAVELENGTH: Final[dict[str, float]] = {
    "u": 367.0,
    "g": 482.0,
    "r": 622.0,
    "i": 755.0,
    "z": 869.0,
    "y": 971.0,
}
#: Metadata features of an LSST model, computed from ``diaSource`` by
#: :mod:`transforms.surveys.lsst` (formulas there; ``m(f) = 31.4 - 2.5 log10(f / nJy)``).
FEATURES_LSST: Final[tuple[str, ...]] = (
    "psf_mag",  # [mag] m(|psfFlux|): brightness of the difference
    "psf_mag_err",  # [mag] 1.0857 psfFluxErr / |psfFlux|
    "is_negative",  # 1 when psfFlux < 0 (fainter than the template), else 0
    "snr",  # detection signal-to-noise ratio in the difference image
    "reliability",  # [0..1] Rubin's ML real/bogus probability; 0.5 when null
    "extendedness",  # [0..1] 0 point-like, 1 extended; 0.5 when null
    "fwhm",  # [arcsec] 2.3548 sqrt((ixx + iyy) / 2) of the adaptive moments; PSF's when null
    "fwhm_psf",  # [arcsec] the same of the PSF moments (the seeing); 1.0 when null
    "trail_length",  # [arcsec] trailed-source fit; 0 when null
    "is_dipole",  # 1 when well fit by a dipole, else 0
    "science_mag",  # [mag] m(scienceFlux), forced on the visit image; -999 when flux <= 0
    "template_mag",  # [mag] m(templateFlux), forced on the template; -999 when flux <= 0
    "saturated",  # 1 when a saturated pixel is in the central 3x3, else 0
    "cosmic_ray",  # 1 when a cosmic ray is in the central 3x3, else 0
    "streak",  # 1 when a satellite streak is in the central 3x3, else 0
    "edge",  # 1 when the footprint touches an image edge, else 0
    "band_wavelength",  # [nm] effective wavelength of the band
    "ra",  # [deg] ICRS
    "dec",  # [deg] ICRS
    "ecl_lat",  # [deg] barycentric mean ecliptic latitude (J2000)
    "ecl_long",  # [deg] barycentric mean ecliptic longitude, [0, 360)
    "gal_lat",  # [deg] Galactic latitude
    "gal_long",  # [deg] Galactic longitude, [0, 360)
)
#: ``diaSource`` fields every LSST alert must carry to be featurised (else a ``features`` letter).
LSST_REQUIRED_FIELDS: Final[tuple[str, ...]] = ("psfFlux", "psfFluxErr", "ra", "dec", "band")

# --- Dead letters (SPEC §9) -----------------------------------------------------------------------
#: Pipeline stages a record can die in, in pipeline order.
STAGE_READ: Final[str] = "read"  # the file or archive member could not be read at all
STAGE_DECODE: Final[str] = "decode"  # Avro container / record / ZTF-shape problems
STAGE_SELECT: Final[str] = "select"  # a selected alert could not be read again from its file
STAGE_STAMPS: Final[str] = "stamps"  # cutout problems (null, JPEG, corrupt gzip, bad FITS, size)
STAGE_FEATURES: Final[str] = "features"
STAGE_INFERENCE: Final[str] = "inference"
#: A row a sink refused (BigQuery's rejected inserts). The row was still written to the other
#: outputs, so these dead letters are not part of the input accounting (:data:`SINK_STAGES`).
STAGE_BIGQUERY: Final[str] = "bigquery"
STAGES: Final[tuple[str, ...]] = (
    STAGE_READ,
    STAGE_DECODE,
    STAGE_SELECT,
    STAGE_STAMPS,
    STAGE_FEATURES,
    STAGE_INFERENCE,
    STAGE_BIGQUERY,
)
#: Stages that fail before a record became an alert (they add to ``records_in``).
INPUT_STAGES: Final[tuple[str, ...]] = (STAGE_READ, STAGE_DECODE)
#: Stages of outputs, not of inputs: ``records_in = classified + skipped + dead letters`` counts
#: every other stage.
SINK_STAGES: Final[tuple[str, ...]] = (STAGE_BIGQUERY,)
#: Columns of a dead-letter record, as written to JSONL / BigQuery. `raw` is base64 in files.
DEAD_LETTER_FIELDS: Final[tuple[str, ...]] = (
    "stage",
    "reason",
    "source",
    "objectId",
    "candid",
    "raw",
)

#: Beam metrics namespace for every counter this project emits.
METRICS_NAMESPACE: Final[str] = "stampflow"

# --- PCollection tags: the outputs every stage composite returns (a dict keyed by these) ---------
TAG_ALERTS: Final[str] = "alerts"  # decoded (or selected) alerts
TAG_EXAMPLES: Final[str] = "examples"  # (key, raw model inputs) from featurize
TAG_CLASSIFIED: Final[str] = "classified"  # (meta, probabilities [5], model directory)
TAG_ROWS: Final[str] = "rows"  # probability rows (PROBABILITY_ROW columns plus report extras)
TAG_DENSITY: Final[str] = "density"  # sky-density rows (SKY_DENSITY_ROW)
TAG_SKIPPED: Final[str] = "skipped"  # (reason, candid) of alerts not classified on purpose
TAG_DEAD_LETTERS: Final[str] = "dead_letters"  # DEAD_LETTER_FIELDS dicts

# --- Pub/Sub message attributes (stampflow publish, the streaming reader) ------------------------
#: Where a message came from (the file or archive member; the job's dead letters quote it).
SOURCE_ATTRIBUTE: Final[str] = "source"
#: The container's earliest event time [ms since the Unix epoch], for ``--timestamp-attribute``.
EVENT_TIME_ATTRIBUTE: Final[str] = "event_time"

# --- Outcome counts: the run summary's keys, and the names of the Beam counters behind them -------
#: Every record's fate is counted under one of these keys (``counts.json`` in batch, Beam
#: counters of the same names in streaming); :mod:`pipeline.summary` turns them into the summary.
COUNT_DECODED: Final[str] = "decoded"  # an alert decoded from its container
COUNT_CLASSIFIED: Final[str] = "classified"  # a probability row written
COUNT_CLASS_PREFIX: Final[str] = "class="  # + predicted class
COUNT_RULE_PREFIX: Final[str] = "rule="  # + rule that fired (SPEC §8)
COUNT_SKIPPED_PREFIX: Final[str] = "skipped="  # + skip reason
COUNT_DEAD_PREFIX: Final[str] = "dead="  # + stage
COUNT_REASON_PREFIX: Final[str] = "reason="  # + "stage:code"

# --- Metadata features (SPEC §4, Carrasco-Davis et al. 2021 Table A1) -----------------------------
#: Production feature order (23). The network's BatchNorm and every stats file are indexed by it.
FEATURES_PRODUCTION: Final[tuple[str, ...]] = (
    "sgscore1",  # [0..1] PS1 star/galaxy score of the nearest PS1 source (1 star); -999 none
    "distpsnr1",  # [arcsec] distance to that source; -999 none
    "sgscore2",  # [0..1] second-nearest PS1 source
    "distpsnr2",  # [arcsec]
    "sgscore3",  # [0..1] third-nearest PS1 source
    "distpsnr3",  # [arcsec]
    "isdiffpos",  # ALeRCE code: 0 positive subtraction ('t'/'1'), 1 negative ('f'/'0')
    "fwhm",  # [pixel] of the source in the science image (SExtractor)
    "magpsf",  # [mag] PSF-fit magnitude in the difference image
    "sigmapsf",  # [mag] its 1-sigma uncertainty
    "ra",  # [deg] J2000
    "dec",  # [deg] J2000
    "diffmaglim",  # [mag] 5-sigma limiting magnitude of the difference image
    "classtar",  # [0..1] SExtractor star/galaxy score in the science image
    "ndethist",  # [count] detections at this position (>= 3 sigma) to date
    "ncovhist",  # [count] times this position was observed to date
    "ecl_lat",  # [deg] barycentric mean ecliptic latitude (J2000)
    "ecl_long",  # [deg] barycentric mean ecliptic longitude, [0, 360)
    "gal_lat",  # [deg] Galactic latitude
    "gal_long",  # [deg] Galactic longitude, [0, 360)
    "non_detections",  # [count] ncovhist - ndethist
    "chinr",  # DAOPhot chi of the nearest source in the reference image
    "sharpnr",  # DAOPhot sharp of the nearest source in the reference image
)
#: Extra features of ALeRCE's ``best_model_so_far`` checkpoint, inserted after ``diffmaglim``.
FEATURES_ALERCE_EXTRA: Final[tuple[str, ...]] = (
    "rb",  # [0..1] RealBogus score (random forest)
    "distnr",  # [pixel] distance to the nearest source in the reference image; -999 none
    "magnr",  # [mag] magnitude of that source; -999 none
)
#: The 26-feature list of ALeRCE's ``best_model_so_far`` (same order as its feature_norm_stats).
FEATURES_ALERCE_26: Final[tuple[str, ...]] = (
    FEATURES_PRODUCTION[: FEATURES_PRODUCTION.index("diffmaglim") + 1]
    + FEATURES_ALERCE_EXTRA
    + FEATURES_PRODUCTION[FEATURES_PRODUCTION.index("diffmaglim") + 1 :]
)
#: ALeRCE's 26 plus ZTF's deep real/bogus score, which separates bright-star subtraction residuals
#: that fool the 2018 ``rb`` (schema >= 3.3; null before, then imputed).
FEATURES_DRB_27: Final[tuple[str, ...]] = (
    *FEATURES_ALERCE_26,
    "drb",  # [0..1] deep-learning RealBogus score (ZTF schema >= 3.3)
)
#: Features computed from other fields rather than read from the candidate record.
DERIVED_FEATURES: Final[tuple[str, ...]] = (
    "isdiffpos",  # encoded from the 't'/'f'/'1'/'0' string
    "ecl_lat",
    "ecl_long",
    "gal_lat",
    "gal_long",
    "non_detections",
)
#: Candidate fields that are non-nullable in every ZTF schema (1.8 to 4.02) and that features need;
#: an alert lacking one (or holding NaN / an unknown isdiffpos) is a ``features`` dead letter.
FEATURE_REQUIRED_FIELDS: Final[tuple[str, ...]] = (
    "ra",
    "dec",
    "magpsf",
    "sigmapsf",
    "isdiffpos",
    "ndethist",
    "ncovhist",
)
#: isdiffpos strings -> ALeRCE code. Counter-intuitive on purpose: ALeRCE weights expect it.
ISDIFFPOS_CODES: Final[dict[str, float]] = {"t": 0.0, "1": 0.0, "f": 1.0, "0": 1.0}

#: Clipping applied before standardisation (SPEC §4, Table A1): feature -> (lower, upper), None for
#: an open side. Features not listed are not clipped.
CLIP_BOUNDS: Final[dict[str, tuple[float | None, float | None]]] = {
    "sgscore1": (-1.0, None),
    "distpsnr1": (-1.0, None),  # [arcsec]
    "sgscore2": (-1.0, None),
    "distpsnr2": (-1.0, None),  # [arcsec]
    "sgscore3": (-1.0, None),
    "distpsnr3": (-1.0, None),  # [arcsec]
    "fwhm": (None, 10.0),  # [pixel]
    "ndethist": (None, 20.0),  # [count]
    "ncovhist": (None, 3000.0),  # [count]
    "chinr": (-1.0, 15.0),
    "sharpnr": (-1.0, 1.5),
    "non_detections": (None, 2000.0),  # [count]
    "distnr": (-1.0, None),  # [pixel]
    "magnr": (-1.0, None),  # [mag]
}

#: Value imputed for a null (or NaN/inf) nullable candidate field, *before* clipping; every
#: imputation is counted per feature. Policy:
#:
#: - fields whose "no counterpart" value ZTF already writes as -999 (PS1 and reference-image cross-
#:   matches) get -999, i.e. "no counterpart", which clipping then maps to -1 exactly like ZTF's own
#:   sentinel;
#: - the other measurements get the mean of ALeRCE's training set (``best_model_so_far`` stats), so
#:   they are neutral: 0 after standardisation with ALeRCE's stats.
#:
#: Required fields (:data:`FEATURE_REQUIRED_FIELDS`) are never imputed: their absence is an error.
IMPUTE_VALUES: Final[dict[str, float]] = {
    "sgscore1": -999.0,
    "distpsnr1": -999.0,  # [arcsec]
    "sgscore2": -999.0,
    "distpsnr2": -999.0,  # [arcsec]
    "sgscore3": -999.0,
    "distpsnr3": -999.0,  # [arcsec]
    "distnr": -999.0,  # [pixel]
    "magnr": -999.0,  # [mag]
    "fwhm": 2.617771,  # [pixel]
    "diffmaglim": 20.216649,  # [mag]
    "classtar": 0.856637,
    "rb": 0.614756,
    # Absent from ZTF alerts before schema 3.3 (2019): undecided, and seen as such in training
    # (the simulator writes it null on nights before then).
    "drb": 0.5,
    "chinr": 1.179800,
    "sharpnr": -0.028653,
}

# --- Model inputs and the tf.Transform graph ------------------------------------------------------
#: Raw model-input keys produced by the featurize stage (and fed to the transform / serving graph).
RAW_FEATURES_KEY: Final[str] = "features"  # float32 [F], imputed, not clipped or standardised
RAW_STAMPS_KEY: Final[str] = "stamps"  # float32 [63, 63, 3] science/template/difference, raw counts
#: Keys the transform graph emits (the network's inputs).
TRANSFORMED_FEATURES_KEY: Final[str] = "features_xf"  # float32 [F], clipped and z-scored
TRANSFORMED_STAMPS_KEY: Final[str] = "stamps_xf"  # float32 [crop, crop, 3] in [0, 1], no NaN
#: Centre-crop sizes the network accepts [pixels] (SPEC §6, Table 3); 21 in production.
CROP_SIZES: Final[tuple[int, ...]] = (21, 41, 63)
DEFAULT_CROP: Final[int] = 21
#: What to do with a stamp that is not 63x63: ``drop`` (dead letter, as ALeRCE) or ``pad`` (NaN).
STAMP_SIZE_POLICIES: Final[tuple[str, ...]] = ("drop", "pad")
#: Output key of the exported serving signature (probabilities in :data:`CLASS_NAMES` order).
SERVING_OUTPUT_KEY: Final[str] = "probabilities"

# --- Classification outputs (SPEC §9) -------------------------------------------------------------
#: Probability column for each class, in CLASS_NAMES order.
PROBABILITY_COLUMNS: Final[tuple[str, ...]] = tuple(f"p_{c}" for c in CLASS_NAMES)
#: One row per classified alert (probabilities/*.parquet, BigQuery `probabilities`).
PROBABILITY_ROW: Final[tuple[tuple[str, str], ...]] = (
    ("objectId", "STRING"),
    ("candid", "INTEGER"),
    ("jd", "FLOAT"),  # [day] Julian date of the detection
    ("ra", "FLOAT"),  # [deg] J2000
    ("dec", "FLOAT"),  # [deg] J2000
    ("fid", "INTEGER"),  # ZTF filter id 1 g, 2 r, 3 i; null for other surveys
    ("magpsf", "FLOAT"),  # [mag] PSF-fit magnitude of the difference (Rubin: m(|psfFlux|))
    ("survey", "STRING"),  # "ztf" or "lsst"
    ("band", "STRING"),  # g r i (ZTF); u g r i z y (Rubin)
    *((c, "FLOAT") for c in PROBABILITY_COLUMNS),
    ("predicted_class", "STRING"),
    ("rule", "STRING"),  # which SPEC §8 rule decided the class; null when the CNN did
    ("model_name", "STRING"),
    ("model_version", "STRING"),
)
PROBABILITY_COLUMN_NAMES: Final[tuple[str, ...]] = tuple(n for n, _ in PROBABILITY_ROW)

# --- Rules around the CNN (SPEC §8), as recorded in the `rule` column -----------------------------
#: ZTF: ssdistnr >= 0 [arcsec]; Rubin: the diaSource has an ssObjectId.
RULE_KNOWN_ASTEROID: Final[str] = "known_solar_system_object"
RULE_SN_VETO_NEGATIVE: Final[str] = "sn_veto_negative_difference"  # SN but isdiffpos negative
RULE_SN_VETO_STAR: Final[str] = "sn_veto_nearby_star"  # SN but sgscore1 > 0.5, distpsnr1 < 1"
#: Thresholds of the SN veto: PS1 star-galaxy score and distance to the nearest PS1 source.
SN_VETO_SGSCORE: Final[float] = 0.5
SN_VETO_DISTANCE: Final[float] = 1.0  # [arcsec]

# --- Selection (SPEC §8): why an alert is skipped before classification ---------------------------
SKIP_NOT_FIRST_IN_INPUT: Final[str] = "not_first_in_input"  # a later alert of an object in the run
SKIP_EARLIER_DETECTION: Final[str] = "earlier_detection_in_history"  # prv_candidates has one before
SKIP_STAMP_SIZE: Final[str] = "stamp_not_63x63"  # --stamp-policy drop (ALeRCE parity)
SKIP_DUPLICATE: Final[str] = "duplicate_candid"  # streaming: a redelivered or replayed alert
#: Streaming: an object's alert older than the one already classified, arriving after the hold.
SKIP_EARLIER_ALREADY_CLASSIFIED: Final[str] = "earlier_after_release"
#: ``--select`` modes: first detections only (ALeRCE production) or every alert.
SELECT_MODES: Final[tuple[str, ...]] = ("first", "all")
#: Streaming: how long a first detection waits for an earlier alert of its object [s].
DEFAULT_HOLD_S: Final[float] = 5.0
#: Streaming: how long a candid / released object is remembered [s] (24 h).
DEFAULT_STATE_TTL_S: Final[float] = 86400.0

# --- Sky density ----------------------------------------------------------------------------------
SKY_DENSITY_ROW: Final[tuple[tuple[str, str], ...]] = (
    # YYYYMMDD: ZTF the UT date (a Palomar night falls within one); Rubin its dayObs, the date at
    # UTC-12 h (a Chilean night straddles 0h UT)
    ("night", "STRING"),
    ("nside", "INTEGER"),
    ("pixel", "INTEGER"),  # HEALPix NESTED index, ICRS
    ("class", "STRING"),  # predicted class
    ("count", "INTEGER"),
    ("mean_probability", "FLOAT"),  # mean p_class of the alerts predicted as that class
    ("survey", "STRING"),  # whose alerts: counts are per survey
)
#: Hours subtracted from UTC to name a survey's night (Rubin's dayObs convention) [h].
NIGHT_OFFSET_HOURS: Final[dict[str, float]] = {"ztf": 0.0, "lsst": 12.0}
