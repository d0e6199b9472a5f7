"""DICOM Comprehensive SR (and optional Secondary Capture overlay) for one scored study.

The SR is what goes back to the PACS, so it carries everything a reader or an auditor needs
without access to msk-triton:

* study-level ensemble probability (mean over the study's scored images), the normal/abnormal call
  and the threshold used, each ensemble member's probability;
* per image: a reference to the source image, body part, probability, members and, for wrists,
  each detected structure as a closed POLYLINE SCOORD (column/row pixel coordinates) with its
  confidence;
* provenance in the way of IHE AI Results (AIR): Contributing Equipment (manufacturer, model
  name, software and model versions, a Device UID derived from the model artifacts' SHA-256 so
  that the same weights always give the same UID), a device observer context, one "Algorithm"
  container per model with name, version and SHA-256;
* VerificationFlag UNVERIFIED and a series description saying research use, not for diagnosis.

The SR joins the source study (same Study Instance UID, patient module copied) in a new series.
Codes from SNOMED CT, LOINC and DCM where one exists; the rest use the private scheme 99MSK,
declared in the Coding Scheme Identification Sequence.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from clients.wrist import Detection
from msk import RESEARCH_USE_NOTICE, __version__

COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"

MANUFACTURER = "msk-triton project"
MODEL_NAME = "msk-triton MURA ensemble"
SR_SERIES_DESCRIPTION = "AI RESULTS - RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
SC_SERIES_DESCRIPTION = "AI OVERLAY - RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
"""High series numbers keep AI objects after the acquired series in PACS viewers."""

PRIVATE_SCHEME = "99MSK"

# (value, scheme, meaning)
Code = tuple[str, str, str]
REPORT = ("18748-4", "LN", "Diagnostic imaging report")
LANGUAGE = ("121049", "DCM", "Language of Content Item and Descendants")
ENGLISH = ("en-US", "RFC5646", "English (United States)")
OBSERVER_TYPE = ("121005", "DCM", "Observer Type")
DEVICE = ("121007", "DCM", "Device")
DEVICE_OBSERVER_UID = ("121012", "DCM", "Device Observer UID")
DEVICE_OBSERVER_NAME = ("121013", "DCM", "Device Observer Name")
DEVICE_OBSERVER_MANUFACTURER = ("121014", "DCM", "Device Observer Manufacturer")
DEVICE_OBSERVER_MODEL = ("121015", "DCM", "Device Observer Model Name")
COMMENT = ("121106", "DCM", "Comment")
FINDINGS = ("121070", "DCM", "Findings")
FINDING = ("121071", "DCM", "Finding")
SOURCE = ("260753009", "SCT", "Source")
FINDING_SITE = ("363698007", "SCT", "Finding site")
ALGORITHM_NAME = ("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = ("111003", "DCM", "Algorithm Version")
IMAGE_REGION = ("111030", "DCM", "Image Region")
PROCESSING_EQUIPMENT = ("109102", "DCM", "Processing Equipment")
NORMAL = ("17621005", "SCT", "Normal")
ABNORMAL = ("263654008", "SCT", "Abnormal")
NO_UNITS = ("1", "UCUM", "no units")
ABNORMALITY_PROBABILITY = ("ABN-PROB", PRIVATE_SCHEME, "Abnormality probability")
ABNORMALITY_CALL = ("ABN-CALL", PRIVATE_SCHEME, "Abnormality assessment")
DECISION_THRESHOLD = ("ABN-THRESH", PRIVATE_SCHEME, "Decision threshold")
IMAGES_SCORED = ("IMG-SCORED", PRIVATE_SCHEME, "Number of images scored")
ALGORITHM = ("ALGORITHM", PRIVATE_SCHEME, "Algorithm")
ARTIFACT_SHA256 = ("SHA256", PRIVATE_SCHEME, "Model artifact SHA-256")
NOT_SCORED = ("NOT-SCORED", PRIVATE_SCHEME, "Instance not scored")
DETECTED_STRUCTURE = ("STRUCTURE", PRIVATE_SCHEME, "Detected structure")
DETECTION_CONFIDENCE = ("DET-CONF", PRIVATE_SCHEME, "Detection confidence")

BODY_PART_CODES: dict[str, Code] = {
    "shoulder": ("16982005", "SCT", "Shoulder region structure"),
    "elbow": ("127949000", "SCT", "Elbow region structure"),
    "finger": ("7569003", "SCT", "Finger structure"),
    "hand": ("85562004", "SCT", "Hand structure"),
    "humerus": ("85050009", "SCT", "Bone structure of humerus"),
    "wrist": ("74670003", "SCT", "Wrist joint structure"),
    "forearm": ("14975008", "SCT", "Forearm structure"),
}

STRUCTURE_MEANINGS: dict[str, str] = {
    "radcar": "Radiocarpal joint",
    "capnlun": "Capitate-lunate (midcarpal) joint",
    "mna": "Metacarpal-trapezium (CMC) joint",
    "mul": "Trapezium (os multangulum majus)",
    "nav": "Scaphoid (os naviculare)",
    "lunate": "Lunate",
}
"""Readable meanings for the wrist detector classes (msk.constants.WRIST_CLASSES)."""


Structure = Detection
"""A detected wrist structure in source-image pixel coordinates (the wrist client's type)."""


@dataclass
class ImageFinding:
    """One source instance of the study and what the models said about it."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    body_part: str | None
    probability: float | None = None
    members: dict[str, float] = field(default_factory=dict)
    abnormal: bool | None = None
    error: str | None = None
    structures: list[Structure] = field(default_factory=list)


@dataclass(frozen=True)
class ModelProvenance:
    """One deployed model: Triton name, version and the SHA-256 of its artifact."""

    name: str
    version: str
    sha256: str


@dataclass
class StudyResult:
    """Everything the SR says about one study."""

    images: list[ImageFinding]
    models: list[ModelProvenance]
    threshold: float
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(SOP Instance UID, reason) for received instances that were not scored."""

    @property
    def scored(self) -> list[ImageFinding]:
        return [i for i in self.images if i.probability is not None]

    @property
    def probability(self) -> float | None:
        from clients.routing import study_probability

        return study_probability(i.probability for i in self.images)

    @property
    def abnormal(self) -> bool | None:
        p = self.probability
        return None if p is None else p >= self.threshold

    @property
    def members(self) -> dict[str, float]:
        """Per member: mean over scored images (the same aggregation as the ensemble)."""
        names: list[str] = []
        for image in self.scored:
            names.extend(n for n in image.members if n not in names)
        return {n: float(np.mean([i.members[n] for i in self.scored if n in i.members]))
                for n in names}


def device_uid(sha256s: Iterable[str]) -> str:
    """A UID (2.25 form) fixed by the set of model artifact digests: same weights, same UID."""
    digests = sorted(s.lower() for s in sha256s if s)
    digest = hashlib.sha256("\n".join(digests).encode()).hexdigest()
    return "2.25." + str(int(digest[:32], 16))


def _code(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code[0], code[1], code[2][:64]
    return item


def _item(relationship: str | None, value_type: str, concept: Code | None) -> Dataset:
    item = Dataset()
    if relationship:
        item.RelationshipType = relationship
    item.ValueType = value_type
    if concept is not None:
        item.ConceptNameCodeSequence = DicomSequence([_code(concept)])
    return item


def _text(rel: str, concept: Code, value: str) -> Dataset:
    item = _item(rel, "TEXT", concept)
    item.TextValue = value
    return item


def _code_item(rel: str, concept: Code, value: Code) -> Dataset:
    item = _item(rel, "CODE", concept)
    item.ConceptCodeSequence = DicomSequence([_code(value)])
    return item


def _uidref(rel: str, concept: Code, value: str) -> Dataset:
    item = _item(rel, "UIDREF", concept)
    item.UID = value
    return item


def _ds(value: float) -> str:
    """DS holds at most 16 characters."""
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.6e}"


def _num(rel: str, concept: Code, value: float, units: Code = NO_UNITS) -> Dataset:
    item = _item(rel, "NUM", concept)
    measured = Dataset()
    measured.NumericValue = _ds(float(value))
    measured.MeasurementUnitsCodeSequence = DicomSequence([_code(units)])
    item.MeasuredValueSequence = DicomSequence([measured])
    return item


def _container(rel: str | None, concept: Code, children: Sequence[Dataset]) -> Dataset:
    item = _item(rel, "CONTAINER", concept)
    item.ContinuityOfContent = "SEPARATE"
    item.ContentSequence = DicomSequence(list(children))
    return item


def _image_ref(rel: str, concept: Code | None, image: ImageFinding) -> Dataset:
    item = _item(rel, "IMAGE", concept)
    ref = Dataset()
    ref.ReferencedSOPClassUID = image.sop_class_uid
    ref.ReferencedSOPInstanceUID = image.sop_instance_uid
    item.ReferencedSOPSequence = DicomSequence([ref])
    return item


def _member_code(member: str) -> Code:
    return (f"MP-{member}"[:16], PRIVATE_SCHEME, f"Member probability {member}")


def _scores(prob: float | None, members: dict[str, float], abnormal: bool | None
            ) -> list[Dataset]:
    items: list[Dataset] = []
    if prob is not None:
        items.append(_num("CONTAINS", ABNORMALITY_PROBABILITY, prob))
    if abnormal is not None:
        items.append(_code_item("CONTAINS", ABNORMALITY_CALL, ABNORMAL if abnormal else NORMAL))
    items.extend(_num("CONTAINS", _member_code(m), p) for m, p in members.items())
    return items


def _structure(image: ImageFinding, s: Structure) -> Dataset:
    meaning = STRUCTURE_MEANINGS.get(s.class_name, s.class_name)
    item = _code_item("CONTAINS", DETECTED_STRUCTURE, (s.class_name[:16], PRIVATE_SCHEME, meaning))
    region = _item("HAS PROPERTIES", "SCOORD", IMAGE_REGION)
    region.GraphicType = "POLYLINE"
    corners = [(s.x1, s.y1), (s.x2, s.y1), (s.x2, s.y2), (s.x1, s.y2), (s.x1, s.y1)]
    region.GraphicData = [float(v) for xy in corners for v in xy]  # column, row pairs
    region.ContentSequence = DicomSequence([_image_ref("SELECTED FROM", None, image)])
    item.ContentSequence = DicomSequence([
        _num("HAS PROPERTIES", DETECTION_CONFIDENCE, s.score), region])
    return item


def _image_container(image: ImageFinding) -> Dataset:
    children = [_image_ref("CONTAINS", SOURCE, image)]
    if image.body_part in BODY_PART_CODES:
        children.append(_code_item("CONTAINS", FINDING_SITE, BODY_PART_CODES[image.body_part]))
    if image.error:
        children.append(_text("CONTAINS", NOT_SCORED, image.error[:1024]))
    children.extend(_scores(image.probability, image.members, image.abnormal))
    children.extend(_structure(image, s) for s in image.structures)
    return _container("CONTAINS", FINDING, children)


def _copy(source: Dataset, target: Dataset, keywords: Iterable[str]) -> None:
    """Copy type-2 attributes, present-but-empty when the source lacks them."""
    for keyword in keywords:
        setattr(target, keyword, source.get(keyword, None) if keyword in source else "")


PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
STUDY_KEYWORDS = ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                  "AccessionNumber")


def _common(source: Dataset, sop_class: str, series_uid: str, series_number: int,
            series_description: str, modality: str, now: dt.datetime, software: list[str],
            models: Sequence[ModelProvenance]) -> Dataset:
    """Patient/study copied from the source; new series; equipment and SOP common."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.TimezoneOffsetFromUTC = now.strftime("%z") or "+0000"
    _copy(source, ds, PATIENT_KEYWORDS)
    ds.StudyInstanceUID = source.StudyInstanceUID
    _copy(source, ds, STUDY_KEYWORDS)
    if "StudyDescription" in source:
        ds.StudyDescription = source.StudyDescription
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate, ds.SeriesTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.InstanceNumber = 1
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.SoftwareVersions = software
    ds.DeviceSerialNumber = device_uid(m.sha256 for m in models)[-16:]
    equipment = Dataset()
    equipment.Manufacturer = MANUFACTURER
    equipment.ManufacturerModelName = MODEL_NAME
    equipment.SoftwareVersions = software
    equipment.DeviceUID = device_uid(m.sha256 for m in models)
    equipment.ContributionDateTime = now.strftime("%Y%m%d%H%M%S%z")
    equipment.ContributionDescription = "AI inference (research use only, not for diagnosis)"
    equipment.PurposeOfReferenceCodeSequence = DicomSequence([_code(PROCESSING_EQUIPMENT)])
    ds.ContributingEquipmentSequence = DicomSequence([equipment])
    return ds


def software_versions(models: Sequence[ModelProvenance]) -> list[str]:
    """SoftwareVersions values (LO, 64 chars each): msk-triton, then each model name:version."""
    return [f"msk-triton {__version__}"] + [f"{m.name}:{m.version}"[:64] for m in models]


def _evidence(source: Dataset, images: Sequence[tuple[str, str, str]]) -> DicomSequence:
    """Current Requested Procedure Evidence: every referenced instance, grouped by series."""
    by_series: dict[str, list[tuple[str, str]]] = {}
    for series_uid, sop_class, sop_uid in images:
        by_series.setdefault(series_uid, []).append((sop_class, sop_uid))
    study = Dataset()
    study.StudyInstanceUID = source.StudyInstanceUID
    series_items = []
    for series_uid, refs in by_series.items():
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        sops = []
        for sop_class, sop_uid in refs:
            ref = Dataset()
            ref.ReferencedSOPClassUID = sop_class
            ref.ReferencedSOPInstanceUID = sop_uid
            sops.append(ref)
        series.ReferencedSOPSequence = DicomSequence(sops)
        series_items.append(series)
    study.ReferencedSeriesSequence = DicomSequence(series_items)
    return DicomSequence([study])


def _file_meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    meta.ImplementationVersionName = f"MSK_TRITON_{__version__}"[:16]
    ds.file_meta = meta


def build_sr(source: Dataset, result: StudyResult, *, now: dt.datetime | None = None,
             series_uid: str | None = None) -> Dataset:
    """The Comprehensive SR for `result`; `source` is any instance of the study (header only)."""
    now = (now or dt.datetime.now(dt.UTC)).astimezone()
    software = software_versions(result.models)
    uid = device_uid(m.sha256 for m in result.models)
    ds = _common(source, COMPREHENSIVE_SR_STORAGE, series_uid or generate_uid(),
                 SR_SERIES_NUMBER, SR_SERIES_DESCRIPTION, "SR", now, software, result.models)
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence([])
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.PerformedProcedureCodeSequence = DicomSequence([])
    referenced = [(i.series_instance_uid, i.sop_class_uid, i.sop_instance_uid)
                  for i in result.images]
    if referenced:
        ds.CurrentRequestedProcedureEvidenceSequence = _evidence(source, referenced)
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "msk-triton result codes"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    ds.CodingSchemeIdentificationSequence = DicomSequence([scheme])

    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = DicomSequence([_code(REPORT)])
    ds.ContinuityOfContent = "SEPARATE"
    content: list[Dataset] = [
        _code_item("HAS CONCEPT MOD", LANGUAGE, ENGLISH),
        _code_item("HAS OBS CONTEXT", OBSERVER_TYPE, DEVICE),
        _uidref("HAS OBS CONTEXT", DEVICE_OBSERVER_UID, uid),
        _text("HAS OBS CONTEXT", DEVICE_OBSERVER_NAME, "msk-triton"),
        _text("HAS OBS CONTEXT", DEVICE_OBSERVER_MANUFACTURER, MANUFACTURER),
        _text("HAS OBS CONTEXT", DEVICE_OBSERVER_MODEL, MODEL_NAME),
        _text("CONTAINS", COMMENT, RESEARCH_USE_NOTICE),
    ]
    study_items: list[Dataset] = _scores(result.probability, result.members, result.abnormal)
    study_items.append(_num("CONTAINS", DECISION_THRESHOLD, result.threshold))
    study_items.append(_num("CONTAINS", IMAGES_SCORED, len(result.scored),
                            ("{images}", "UCUM", "images")))
    study_items.extend(_image_container(i) for i in result.images)
    study_items.extend(_text("CONTAINS", NOT_SCORED, f"{sop}: {why}"[:1024])
                       for sop, why in result.skipped)
    content.append(_container("CONTAINS", FINDINGS, study_items))
    for model in result.models:
        items = [_text("CONTAINS", ALGORITHM_NAME, model.name),
                 _text("CONTAINS", ALGORITHM_VERSION, model.version or "unknown")]
        if model.sha256:
            items.append(_text("CONTAINS", ARTIFACT_SHA256, model.sha256))
        content.append(_container("CONTAINS", ALGORITHM, items))
    ds.ContentSequence = DicomSequence(content)
    _file_meta(ds)
    return ds


def build_overlay(source: Dataset, image: np.ndarray, heatmap: np.ndarray,
                  models: Sequence[ModelProvenance], *, series_uid: str | None = None,
                  alpha: float = 0.4, now: dt.datetime | None = None) -> Dataset:
    """Secondary Capture (RGB) of the grayscale image with the abnormality heatmap blended in.

    `image` is the uint8 scoring image of `source`; `heatmap` is the ensemble's uint8 map
    (any size, resized here to the image). Red intensity = heatmap; the gray image shows through.
    """
    from PIL import Image

    now = (now or dt.datetime.now(dt.UTC)).astimezone()
    ds = _common(source, SECONDARY_CAPTURE_STORAGE, series_uid or generate_uid(),
                 SC_SERIES_NUMBER, SC_SERIES_DESCRIPTION, "OT", now,
                 software_versions(models), models)
    h, w = image.shape
    heat = np.asarray(Image.fromarray(heatmap).resize((w, h), Image.BILINEAR), dtype=np.float32)
    gray = image.astype(np.float32)
    weight = alpha * heat / 255.0
    rgb = np.stack([gray * (1 - weight) + 255.0 * weight, gray * (1 - weight),
                    gray * (1 - weight)], axis=-1)
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "NO"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = "Abnormality heatmap overlay; " + RESEARCH_USE_NOTICE[:900]
    ds.PatientOrientation = source.get("PatientOrientation", "") or ""
    ds.Laterality = source.get("Laterality", "") or ""
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ds.SourceImageSequence = DicomSequence([ref])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = h, w
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.tobytes()
    _file_meta(ds)
    return ds


# --------------------------------------------------------------------------------------------
# Reading an SR back (tests, the web app, anyone auditing what was sent)
# --------------------------------------------------------------------------------------------
def _concept(item: Dataset) -> str:
    seq = item.get("ConceptNameCodeSequence")
    return str(seq[0].CodeMeaning) if seq else ""


def _value(item: Dataset) -> object:
    kind = item.ValueType
    if kind == "NUM":
        return float(item.MeasuredValueSequence[0].NumericValue)
    if kind == "CODE":
        return str(item.ConceptCodeSequence[0].CodeMeaning)
    if kind == "TEXT":
        return str(item.TextValue)
    if kind == "UIDREF":
        return str(item.UID)
    if kind == "IMAGE":
        return str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    if kind == "SCOORD":
        return [float(v) for v in item.GraphicData]
    return None


def summarize(ds: Dataset) -> dict:
    """The SR's content as a plain dict: study scores, images, algorithms, observer context."""
    out: dict = {"images": [], "algorithms": [], "not_scored": [], "context": {}}
    for item in ds.ContentSequence:
        name = _concept(item)
        if item.ValueType == "CONTAINER" and name == FINDINGS[2]:
            for child in item.ContentSequence:
                cname = _concept(child)
                if child.ValueType == "CONTAINER" and cname == FINDING[2]:
                    out["images"].append(_summarize_image(child))
                elif cname == NOT_SCORED[2]:
                    out["not_scored"].append(_value(child))
                else:
                    out[cname] = _value(child)
        elif item.ValueType == "CONTAINER" and name == ALGORITHM[2]:
            out["algorithms"].append({_concept(c): _value(c) for c in item.ContentSequence})
        else:
            out["context"][name] = _value(item)
    return out


def _summarize_image(container: Dataset) -> dict:
    image: dict = {"structures": []}
    for child in container.ContentSequence:
        name = _concept(child)
        if name == DETECTED_STRUCTURE[2]:
            structure = {"class": str(child.ConceptCodeSequence[0].CodeValue)}
            for prop in child.ContentSequence:
                structure[_concept(prop)] = _value(prop)
                if prop.ValueType == "SCOORD":
                    structure["selected_from"] = _value(prop.ContentSequence[0])
            image["structures"].append(structure)
        else:
            image[name] = _value(child)
    return image
