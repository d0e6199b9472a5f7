"""DICOM results for one scored study, built by highdicom: a TID 1500 Measurement Report SR and,
opt-in, one Segmentation per scored image holding its class-activation heatmap (written by
`clients.heatmap_seg`, with the names and provenance helpers defined here).

Why TID 1500 and a Segmentation: the viewers that display AI results (OHIF and the commercial
ones following IHE AI Results) read TID 1500 measurement groups and overlay Segmentations on
their source image; other SR templates show as text at best, and a Secondary Capture is a new
picture, not an overlay. highdicom is the well-kept library that writes both
the way the standard says, so this module only decides *what* to say about a
`clients.findings.StudyResult` (the study's one `study_call`, the models' provenance as Triton
returned it; a model whose output is written without its provenance raises `ProvenanceError`):

* observation context: the device observer (Device Observer UID = a UID derived from the model
  artifacts' SHA-256, so the same weights always give the same UID, name, manufacturer, model);
* one TID 1501 measurement group for the study (mean over its scored images) and one per scored
  image (source image referenced): the abnormality `Probability` (DCM 122157) of the ensemble,
  the call as a qualitative evaluation `Impression` (DCM 121073) = Normal / Abnormal (SNOMED
  CT) with the body part's operating point as `CAD Operating Point` (DCM 111071), each
  member's `Probability` with that member as its Algorithm Identification (name, version,
  SHA-256 parameter), and the body part as Finding Site (SNOMED CT);
* for wrists one TID 1410 planar ROI group per detected structure: the box as a closed POLYLINE
  SCOORD on the source image, the structure as finding type (SNOMED CT where it has a code) and
  the detector's confidence as `Certainty of Finding` (DCM 111012);
* in every image group, the out-of-distribution score and its threshold and the members'
  spread (issue 21: how far the result can be trusted); an image the OOD gate refused (the
  gateway's default policy) gets a group of its own, source image referenced, with no
  probability and no call but the coded statement `Assessment` = `Not assessed`, `Reason not
  assessed` = `Out of distribution for the model`, and its OOD score and threshold;
* a root "Qualitative Evaluations" container (TID 1500 row 12) with the research-use `Comment`
  and one TEXT per instance that was not scored, with the reason: `Failed Analyses` (routed but
  unreadable), `Not Attempted` (not an image, not routed, or refused as out of distribution).

What has no standard code (four of the six wrist structures, the OOD statements) uses the private
scheme 99MSK, declared once in the Coding Scheme Identification Sequence. VerificationFlag is
UNVERIFIED, the series description says research use, and the IHE AIR Contributing Equipment
item carries manufacturer, model, software versions and the Device UID.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from clients.findings import ImageFinding, ModelProvenance, Structure, StudyResult
from msk import RESEARCH_USE_NOTICE, __version__
from msk.constants import WRIST_DETECTORS

COMPREHENSIVE_3D_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

MANUFACTURER = "msk-triton project"
MODEL_NAME = "msk-triton MURA ensemble"
SR_SERIES_DESCRIPTION = "AI RESULTS - RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
HEATMAP_SERIES_DESCRIPTION = "AI HEATMAP - RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
SR_SERIES_NUMBER = 9901
HEATMAP_SERIES_NUMBER = 9902
"""High series numbers keep AI objects after the acquired series in PACS viewers."""

PRIVATE_SCHEME = "99MSK"

# Standard codes (SNOMED CT, DCM, UCUM, UMLS as TID 1500 names it)
PROCEDURE_REPORTED = Code("168537006", "SCT", "Plain radiography")
PROBABILITY = Code("122157", "DCM", "Probability")
IMPRESSION = Code("121073", "DCM", "Impression")
NORMAL = Code("17621005", "SCT", "Normal")
ABNORMAL = Code("263654008", "SCT", "Abnormal")
OPERATING_POINT = Code("111071", "DCM", "CAD Operating Point")
CERTAINTY = Code("111012", "DCM", "Certainty of Finding")
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical structure")
NO_UNITS = Code("1", "UCUM", "no units")
COMMENT = Code("121106", "DCM", "Comment")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
MORPHOLOGICALLY_ABNORMAL = Code("49755003", "SCT", "Morphologically abnormal structure")
FAILED_ANALYSES = Code("111024", "DCM", "Failed Analyses")
NOT_ATTEMPTED = Code("111225", "DCM", "Not Attempted")

OOD_SCORE = Code("OODSCORE", PRIVATE_SCHEME, "Out-of-distribution score")
OOD_THRESHOLD = Code("OODTHRESH", PRIVATE_SCHEME, "Out-of-distribution threshold")
MEMBER_SPREAD = Code("SPREAD", PRIVATE_SCHEME, "Ensemble member spread")
ASSESSMENT = Code("ASSESSMENT", PRIVATE_SCHEME, "Assessment")
NOT_ASSESSED = Code("NOTASSESSED", PRIVATE_SCHEME, "Not assessed")
REASON_NOT_ASSESSED = Code("REASONNA", PRIVATE_SCHEME, "Reason not assessed")
OUT_OF_DISTRIBUTION = Code("OOD", PRIVATE_SCHEME, "Out of distribution for the model")
"""The OOD gate's statements (issue 21): no standard code says "not assessed because the image
is unlike the model's training data", so they are private, declared like the wrist codes."""
REFUSED_IMAGES = Code("NREFUSED", PRIVATE_SCHEME, "Images not assessed (out of distribution)")

STUDY_GROUP = "Study result"
"""Tracking identifier of the study-level measurement group (images: 'Image <n>')."""

BODY_PART_CODES: dict[str, Code] = {
    "shoulder": Code("16982005", "SCT", "Shoulder region structure"),
    "elbow": Code("127949000", "SCT", "Elbow region structure"),
    "finger": Code("7569003", "SCT", "Finger structure"),
    "hand": Code("85562004", "SCT", "Hand structure"),
    "humerus": Code("85050009", "SCT", "Bone structure of humerus"),
    "wrist": Code("74670003", "SCT", "Wrist joint structure"),
    "forearm": Code("14975008", "SCT", "Forearm structure"),
}

STRUCTURE_CODES: dict[str, Code] = {
    "radcar": Code("74670003", "SCT", "Wrist joint structure"),  # the radiocarpal joint
    "nav": Code("30518006", "SCT", "Bone structure of scaphoid"),
    "capnlun": Code("capnlun", PRIVATE_SCHEME, "Capitate-lunate (midcarpal) joint"),
    "mna": Code("mna", PRIVATE_SCHEME, "Metacarpal-trapezium (CMC) joint"),
    "mul": Code("mul", PRIVATE_SCHEME, "Trapezium (os multangulum majus)"),
    "lunate": Code("lunate", PRIVATE_SCHEME, "Lunate"),
}
"""Wrist detector classes (msk.constants.WRIST_CLASSES) as finding types."""
CLASS_BY_CODE = {(c.value, c.scheme_designator): name for name, c in STRUCTURE_CODES.items()}


def device_uid(sha256s: Iterable[str | None]) -> str:
    """A UID (2.25 form) fixed by the set of model artifact digests: same weights, same UID."""
    digests = sorted(s.lower() for s in sha256s if s)
    digest = hashlib.sha256("\n".join(digests).encode()).hexdigest()
    return "2.25." + str(int(digest[:32], 16))


def software_versions(models: Sequence[ModelProvenance]) -> list[str]:
    """SoftwareVersions values (LO, 64 chars each): msk-triton, then each model name:version."""
    return [f"msk-triton {__version__}"] + [f"{m.name}:{m.version}"[:64] for m in models]


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------
PATIENT_STUDY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                          "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                          "AccessionNumber")


def _study_header(source: Dataset) -> Dataset:
    """The source's patient/study attributes, type-2 ones present-but-empty when missing."""
    ds = Dataset()
    for keyword in PATIENT_STUDY_KEYWORDS:
        setattr(ds, keyword, source.get(keyword, "") if keyword in source else "")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID",
                    "StudyDescription", "SpecificCharacterSet"):
        if keyword in source:
            setattr(ds, keyword, source.get(keyword))
    return ds


def _reference(study_uid: str, image: ImageFinding) -> Dataset:
    ref = Dataset()
    ref.StudyInstanceUID = study_uid
    ref.SeriesInstanceUID = image.series_instance_uid
    ref.SOPClassUID = image.sop_class_uid
    ref.SOPInstanceUID = image.sop_instance_uid
    return ref


DETECTOR_OF_CLASS: dict[str, str] = {name: model for model, classes in WRIST_DETECTORS.values()
                                     for name in classes}
"""Wrist structure class -> the detector model that finds it: a structure's confidence is that
detector's output, so its algorithm is that detector (with its version and SHA-256)."""


def _algorithm(model: ModelProvenance) -> hd.sr.AlgorithmIdentification:
    """A model as TID 4019 says it: name, version as Triton reported it, and its SHA-256 as a
    parameter when it has one (an ensemble has none)."""
    return hd.sr.AlgorithmIdentification(
        name=model.name, version=model.version,
        parameters=[f"sha256={model.sha256}"] if model.sha256 else None)


def _pipeline(models: Sequence[ModelProvenance]) -> hd.sr.AlgorithmIdentification:
    """The study group's algorithm: msk-triton, every deployed model one parameter
    (`model=NAME;version=V[;sha256=HEX]`) - the set the Device UID is derived from."""
    return hd.sr.AlgorithmIdentification(
        name="msk-triton", version=__version__, manufacturer=MANUFACTURER,
        parameters=[f"model={m.name};version={m.version}"
                    + (f";sha256={m.sha256}" if m.sha256 else "") for m in models] or None)


def _equipment(models: Sequence[ModelProvenance], now: dt.datetime
               ) -> hd.base_content.ContributingEquipment:
    """IHE AIR Contributing Equipment: who made this object (its Device UID is in the General
    Equipment module: dciodvfy does not know Device UID inside this sequence)."""
    item = hd.base_content.ContributingEquipment(
        manufacturer=MANUFACTURER, purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=MODEL_NAME, software_versions=software_versions(models),
        contribution_datetime=now,
        contribution_description="AI inference (research use only, not for diagnosis)")
    return item


def _scores(probability: float, members: dict[str, float], abnormal: bool, threshold: float,
            result: StudyResult, ensemble: str
            ) -> tuple[list[hd.sr.Measurement], list[hd.sr.QualitativeEvaluation]]:
    """Probability, operating point and call; each probability names the model that gave it
    (`StudyResult.model` raises when the result lacks that model's provenance)."""
    measurements = [
        hd.sr.Measurement(name=PROBABILITY, value=float(probability), unit=NO_UNITS,
                          algorithm_id=_algorithm(result.model(ensemble))),
        hd.sr.Measurement(name=OPERATING_POINT, value=float(threshold), unit=NO_UNITS)]
    measurements.extend(
        hd.sr.Measurement(name=PROBABILITY, value=float(p), unit=NO_UNITS,
                          algorithm_id=_algorithm(result.model(m)))
        for m, p in members.items())
    call = hd.sr.QualitativeEvaluation(IMPRESSION, ABNORMAL if abnormal else NORMAL)
    return measurements, [call]


def _trust(image: ImageFinding) -> list[hd.sr.Measurement]:
    """The OOD score, its threshold and the member spread of one image (those known)."""
    values = [(OOD_SCORE, image.ood_score), (OOD_THRESHOLD, image.ood_threshold),
              (MEMBER_SPREAD, image.member_spread)]
    return [hd.sr.Measurement(name=name, value=float(v), unit=NO_UNITS)
            for name, v in values if v is not None]


def _structure_group(image: ImageFinding, index: int, s: Structure, result: StudyResult
                     ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    code = STRUCTURE_CODES.get(s.class_name, Code(s.class_name[:16], PRIVATE_SCHEME,
                                                  s.class_name))
    corners = np.array([(s.x1, s.y1), (s.x2, s.y1), (s.x2, s.y2), (s.x1, s.y2), (s.x1, s.y1)],
                       dtype=float)                      # column, row: a closed polyline
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=corners,
        source_image=hd.sr.SourceImageForRegion(image.sop_class_uid, image.sop_instance_uid))
    detector = result.model(DETECTOR_OF_CLASS.get(s.class_name, s.class_name))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=f"Image {index} {s.class_name}"),
        referenced_region=region, finding_category=ANATOMICAL_STRUCTURE, finding_type=code,
        measurements=[hd.sr.Measurement(name=CERTAINTY, value=float(s.score), unit=NO_UNITS,
                                        algorithm_id=_algorithm(detector))])


def build_sr(source: Dataset, result: StudyResult, *, now: dt.datetime | None = None,
             series_uid: str | None = None) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report for `result`; `source` is any instance of the study (header only)."""
    from msk.constants import MURA_ENSEMBLE_MODEL

    now = (now or dt.datetime.now(dt.UTC)).astimezone()
    uid = device_uid(m.sha256 for m in result.models)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uid, name="msk-triton", manufacturer_name=MANUFACTURER, model_name=MODEL_NAME))
    groups: list = []
    scored = result.scored
    if scored:
        measurements, evaluations = _scores(
            result.probability, result.members, bool(result.abnormal), result.threshold,
            result, MURA_ENSEMBLE_MODEL)
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(),
                                                         identifier=STUDY_GROUP),
            algorithm_id=_pipeline(result.models),
            measurements=measurements + ([hd.sr.Measurement(
                name=REFUSED_IMAGES, value=float(result.call.refused), unit=NO_UNITS)]
                if result.call.refused else []),
            qualitative_evaluations=evaluations,
            source_images=[hd.sr.SourceImageForMeasurementGroup(
                i.sop_class_uid, i.sop_instance_uid) for i in scored]))
    for index, image in enumerate(result.images, start=1):
        site = BODY_PART_CODES.get(image.body_part or "")
        if image.refused:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(),
                                                             identifier=f"Image {index}"),
                finding_sites=[hd.sr.FindingSite(site)] if site else None,
                measurements=_trust(image) or None,
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(ASSESSMENT, NOT_ASSESSED),
                    hd.sr.QualitativeEvaluation(REASON_NOT_ASSESSED, OUT_OF_DISTRIBUTION)],
                source_images=[hd.sr.SourceImageForMeasurementGroup(
                    image.sop_class_uid, image.sop_instance_uid)]))
            continue
        if image.probability is None:
            continue
        threshold = result.threshold if image.threshold is None else image.threshold
        abnormal = image.abnormal if image.abnormal is not None else \
            image.probability >= threshold
        measurements, evaluations = _scores(image.probability, image.members, abnormal,
                                            threshold, result, MURA_ENSEMBLE_MODEL)
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(),
                                                         identifier=f"Image {index}"),
            finding_sites=[hd.sr.FindingSite(site)] if site else None,
            measurements=measurements + _trust(image), qualitative_evaluations=evaluations,
            source_images=[hd.sr.SourceImageForMeasurementGroup(image.sop_class_uid,
                                                                image.sop_instance_uid)]))
        groups.extend(_structure_group(image, index, s, result) for s in image.structures)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE_REPORTED, imaging_measurements=groups or None)

    notes = [hd.sr.TextContentItem(name=COMMENT, value=RESEARCH_USE_NOTICE,
                                   relationship_type="CONTAINS")]
    notes.extend(hd.sr.TextContentItem(name=NOT_ATTEMPTED if i.refused else FAILED_ANALYSES,
                                       value=f"{i.sop_instance_uid}: "
                                       f"{i.error or 'not scored'}"[:1024],
                                       relationship_type="CONTAINS")
                 for i in result.images if i.probability is None)
    notes.extend(hd.sr.TextContentItem(name=NOT_ATTEMPTED,
                                       value=f"{s.sop_instance_uid}: {s.reason}"[:1024],
                                       relationship_type="CONTAINS")
                 for s in result.skipped)
    report[0].ContentSequence.append(hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS"))
    report[0].ContentSequence[-1].ContentSequence = hd.sr.ContentSequence(notes)

    header = _study_header(source)
    evidence = [header] + [_reference(source.StudyInstanceUID, i) for i in result.images
                           if (i.probability is not None or i.refused)
                           and i.sop_instance_uid != header.get("SOPInstanceUID")]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report[0],
        series_instance_uid=series_uid or generate_uid(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME, software_versions=software_versions(result.models),
        device_serial_number=uid[-16:], series_description=SR_SERIES_DESCRIPTION,
        is_complete=True, is_final=False, is_verified=False, record_evidence=True,
        contributing_equipment=[_equipment(result.models, now)],
        coding_schemes=_private_scheme(report),
        specific_character_set="ISO_IR 192")
    sr.DeviceUID = uid
    if "StudyDescription" in source:
        sr.StudyDescription = source.StudyDescription
    return sr


def _private_scheme(report: hd.sr.MeasurementReport
                    ) -> list[CodingSchemeIdentificationItem] | None:
    """Declare 99MSK (once) when the report uses one of its codes."""
    used = any(item.CodingSchemeDesignator == PRIVATE_SCHEME
               for item in _code_items(report[0]))
    if not used:
        return None
    return [CodingSchemeIdentificationItem(designator=PRIVATE_SCHEME,
                                           name="msk-triton result codes",
                                           responsible_organization=MANUFACTURER)]


def _code_items(item: Dataset) -> Iterable[Dataset]:
    for keyword in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
        yield from item.get(keyword, [])
    for child in item.get("ContentSequence", []):
        yield from _code_items(child)


# --------------------------------------------------------------------------------------------
# Reading back (tests, anyone auditing what was sent): through highdicom's TID 1500 reader
# --------------------------------------------------------------------------------------------
def _algorithm_of(measurement) -> dict | None:
    """TID 4019 Algorithm Identification under a measurement's NUM item, as a dict."""
    fields: dict = {}
    for item in measurement[0].get("ContentSequence", []):
        code = item.ConceptNameCodeSequence[0].CodeValue
        if code == codes.DCM.AlgorithmName.value:
            fields["name"] = str(item.TextValue)
        elif code == codes.DCM.AlgorithmVersion.value:
            fields["version"] = str(item.TextValue)
        elif code == codes.DCM.AlgorithmParameters.value and \
                str(item.TextValue).startswith("sha256="):
            fields["sha256"] = str(item.TextValue).split("=", 1)[1]
    return fields or None


def _num(group, name: Code) -> list[tuple[float, str | None]]:
    """(value, algorithm name) of each NUM `name` in the group."""
    out = []
    for m in group.get_measurements(name=name):
        algorithm = _algorithm_of(m)
        out.append((float(m.value), algorithm["name"] if algorithm else None))
    return out


def _scores_of(group, ensemble: str) -> dict:
    probabilities = _num(group, PROBABILITY)
    out: dict = {"members": {}}
    for value, algorithm in probabilities:
        if algorithm == ensemble:
            out["probability"] = value
        else:
            out["members"][algorithm] = value
    points = _num(group, OPERATING_POINT)
    if points:
        out["operating_point"] = points[0][0]
    calls = group.get_qualitative_evaluations(name=IMPRESSION)
    if calls:
        out["call"] = calls[0].value.meaning
    for key, name in (("ood_score", OOD_SCORE), ("ood_threshold", OOD_THRESHOLD),
                      ("member_spread", MEMBER_SPREAD), ("refused_images", REFUSED_IMAGES)):
        found = _num(group, name)
        if found:
            out[key] = found[0][0]
    assessment = group.get_qualitative_evaluations(name=ASSESSMENT)
    if assessment:
        out["assessment"] = assessment[0].value.meaning
        reasons = group.get_qualitative_evaluations(name=REASON_NOT_ASSESSED)
        out["reason_not_assessed"] = reasons[0].value.meaning if reasons else None
    return out


def _algorithms(study_group) -> list[dict]:
    """Every deployed model, from the study group's algorithm parameters (see `_pipeline`)."""
    found = []
    for item in study_group[0].ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.AlgorithmParameters.value \
                and str(item.TextValue).startswith("model="):
            fields = dict(part.split("=", 1) for part in str(item.TextValue).split(";"))
            found.append({"name": fields["model"], "version": fields.get("version"),
                          "sha256": fields.get("sha256") or None})
    return found


def summarize(ds: Dataset) -> dict:
    """The report's content as a plain dict, read with highdicom (`Comprehensive3DSR`,
    `MeasurementReport`): study and per-image scores, structures, algorithms, observer."""
    from msk.constants import MURA_ENSEMBLE_MODEL

    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    report = hd.sr.MeasurementReport.from_sequence(sr.content)
    out: dict = {"images": [], "not_scored": [], "comments": [], "algorithms": []}
    (observer,) = report.get_observer_contexts(observer_type=codes.DCM.Device)
    out["device_observer_uid"] = observer.observer_identifying_attributes.uid
    images = report.get_image_measurement_groups()
    rois = report.get_planar_roi_measurement_groups()
    by_source: dict[str, dict] = {}
    for group in images:
        scores = _scores_of(group, MURA_ENSEMBLE_MODEL)
        if group.tracking_identifier == STUDY_GROUP:
            out.update(scores)
            out["images_scored"] = len(group.source_images)
            out["algorithms"] = _algorithms(group)
            continue
        (source,) = group.source_images
        image = {"source": source.referenced_sop_instance_uid, "structures": [], **scores}
        sites = group.finding_sites
        if sites:
            image["finding_site"] = sites[0].value.meaning
        out["images"].append(image)
        by_source[image["source"]] = image
    for group in rois:
        finding = group.finding_type
        region = group.roi
        (certainty,) = group.get_measurements(name=CERTAINTY)
        structure = {
            "class": CLASS_BY_CODE.get((finding.value, finding.scheme_designator),
                                       finding.value),
            "meaning": finding.meaning, "confidence": float(certainty.value),
            "algorithm": _algorithm_of(certainty),
            "region": [float(v) for v in np.asarray(region.value).ravel()],
            "graphic_type": region.graphic_type.value,
            "selected_from": region.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            if "ReferencedSOPSequence" in region else
            region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID}
        by_source[structure["selected_from"]]["structures"].append(structure)
    for item in report[0].ContentSequence:
        if item.ValueType == "CONTAINER" and item.name == QUALITATIVE_EVALUATIONS:
            for note in item.ContentSequence:
                key = "comments" if note.name == COMMENT else "not_scored"
                out[key].append(str(note.value))
    return out
