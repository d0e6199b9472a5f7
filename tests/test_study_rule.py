"""The one study rule (`clients.study`) and the one error classification
(`clients.errors`, item 6), as unit tests; the end-to-end tests of `msk score`, the web app and
the gateway (test_batch_score, test_web_api, test_gateway_e2e) run the same rule on real
servers."""

from __future__ import annotations

import pytest
from tritonclient.utils import InferenceServerException

from clients.batch import study_rows
from clients.errors import Reason, is_retryable, request_reason
from clients.findings import ImageFinding, StudyResult
from clients.study import NO_IMAGE_SCORED, ScoredImage, study_call
from clients.web.service import aggregate


def test_study_probability_is_the_mean_of_the_scored_images_only():
    call = study_call([ScoredImage(0.2, "wrist", 0.4), ScoredImage(None, "wrist"),
                       ScoredImage(0.6, "wrist", 0.4), ScoredImage(0.7, "wrist", 0.4)])
    assert call.probability == pytest.approx(0.5)
    assert (call.images, call.scored, call.threshold, call.abnormal) == (4, 3, 0.4, True)
    assert call.body_part == "wrist" and not call.mixed_body_parts and call.error is None


def test_no_scored_image_means_no_probability_and_an_error():
    call = study_call([ScoredImage(None, "hand"), ScoredImage(None, "hand")])
    assert (call.probability, call.threshold, call.abnormal) == (None, None, None)
    assert call.error == NO_IMAGE_SCORED and call.scored == 0
    assert study_call([]).error == NO_IMAGE_SCORED


def test_the_body_parts_operating_point_decides_and_zero_stays_zero():
    assert study_call([ScoredImage(0.3, "elbow", 0.25)]).abnormal is True
    assert study_call([ScoredImage(0.3, "elbow", 0.35)]).abnormal is False
    zero = study_call([ScoredImage(0.01, "hand", 0.0)], default_threshold=0.5)
    assert zero.threshold == 0.0 and zero.abnormal is True      # 0.0 is not "missing"


def test_mixed_body_parts_use_the_default_operating_point_and_say_so():
    images = [ScoredImage(0.45, "wrist", 0.3), ScoredImage(0.45, "hand", 0.6)]
    call = study_call(images, default_threshold=0.5)
    assert call.mixed_body_parts and call.body_part is None
    assert (call.threshold, call.abnormal) == (0.5, False)
    assert study_call(images, default_threshold=0.4).abnormal is True
    # An image without a body part takes the study's; it does not make the study mixed.
    assert not study_call([ScoredImage(0.5, "wrist", 0.3), ScoredImage(0.5, None, 0.3)]
                          ).mixed_body_parts


def test_the_call_does_not_depend_on_the_order_of_the_images():
    """An image without a body part carries the DEFAULT point; the study's part decides."""
    images = [ScoredImage(0.4, None, 0.5), ScoredImage(0.4, "wrist", 0.3)]
    for order in (images, images[::-1]):
        call = study_call(order, default_threshold=0.5)
        assert (call.body_part, call.threshold, call.abnormal) == ("wrist", 0.3, True)


def test_a_failed_image_has_no_vote_on_the_body_part_either():
    call = study_call([ScoredImage(0.4, "wrist", 0.3), ScoredImage(None, "hand")],
                      default_threshold=0.5)
    assert not call.mixed_body_parts and call.body_part == "wrist" and call.threshold == 0.3


def test_batch_web_and_gateway_apply_the_same_rule():
    images = [(0.2, "wrist", 0.0), (None, "wrist", None), (0.4, "wrist", 0.0)]
    rows = [{"study": "s1", "probability": p, "body_part": b, "threshold": t, "label": 1,
             "error": None if p is not None else "x: unreadable"} for p, b, t in images]
    (batch,) = study_rows(rows, default_threshold=0.5)
    web = aggregate([{"probability": p, "body_part": b, "threshold": t, "members": {}}
                     if p is not None else {"error": "x"} for p, b, t in images], 0.5)
    findings = [ImageFinding("1.2", f"1.{i}", "1.3", b, probability=p, threshold=t)
                for i, (p, b, t) in enumerate(images)]
    gateway = StudyResult.of(findings, [], default_threshold=0.5).call
    for got in (batch, web, gateway.to_json()):
        assert got["probability"] == pytest.approx(0.3)
        assert got["threshold"] == 0.0 and got["abnormal"] is True
        assert got["mixed_body_parts"] is False
    assert (batch["images"], batch["scored"], batch["label"]) == (3, 2, 1)

    mixed = [dict(r, body_part=part) for r, part in zip(rows, ["wrist", "hand", "hand"],
                                                         strict=True)]
    (batch,) = study_rows(mixed, default_threshold=0.5)
    assert batch["mixed_body_parts"] and batch["threshold"] == 0.5 and not batch["abnormal"]


def _exc(status: str, message: str = "boom") -> InferenceServerException:
    return InferenceServerException(msg=message, status=status)


@pytest.mark.parametrize(("status", "message", "reason"), [
    ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", Reason.SERVER_UNAVAILABLE),
    ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", Reason.SERVER_OVERLOADED),
    ("StatusCode.RESOURCE_EXHAUSTED", "x", Reason.SERVER_OVERLOADED),
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", Reason.TIMEOUT),
    ("StatusCode.NOT_FOUND", "Request for unknown model", Reason.MODEL_NOT_FOUND),
    ("StatusCode.INVALID_ARGUMENT", "unexpected shape", Reason.REJECTED_BY_SERVER),
    ("StatusCode.INTERNAL", "not found", Reason.INFERENCE_FAILED),  # the text does not decide
    # documented exception: a dead model process is the server's state, not this input's fault
    ("StatusCode.INTERNAL", "Failed to process the request(s) for model instance "
     "'mura_preprocess_0_0', message: Stub process 'mura_preprocess_0_0' is not healthy.",
     Reason.SERVER_UNAVAILABLE),
])
def test_request_errors_are_classified_by_status_code(status, message, reason):
    assert request_reason(_exc(status, message)) == reason


def test_retry_is_decided_on_the_reason():
    assert all(is_retryable(r) for r in (Reason.SERVER_UNAVAILABLE, Reason.SERVER_OVERLOADED,
                                         Reason.TIMEOUT, Reason.MODEL_NOT_FOUND))
    assert not any(is_retryable(r) for r in (Reason.REJECTED_BY_SERVER, Reason.BAD_RESPONSE,
                                             Reason.INFERENCE_FAILED, "unreadable_image", None))
    assert request_reason(ConnectionRefusedError()) == Reason.SERVER_UNAVAILABLE
    assert request_reason(TimeoutError()) == Reason.TIMEOUT


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_studies_from_written_rows_use_the_models_recorded_default(tmp_path, suffix):
    """`--merge` and a resume that scores nothing rebuild studies from the rows alone: the model's
    default operating point travels in each scored row, so a mixed study is called the same way
    as by the run that scored it (here 0.4, not the constant 0.5)."""
    from clients.outputs import open_sink, read_rows

    out = tmp_path / f"scores{suffix}"
    sink, _ = open_sink(out, resume=False)
    for name, part, threshold in (("a.png", "wrist", 0.3), ("b.png", "hand", 0.6)):
        sink.write({"input": name, "study": "s1", "probability": 0.45, "body_part": part,
                    "threshold": threshold, "default_threshold": 0.4, "abnormal": None,
                    "members": {}, "versions": {"pipeline": "1"}, "error": None})
    sink.close()
    (study,) = study_rows(read_rows(out))
    assert study["mixed_body_parts"] and study["threshold"] == 0.4 and study["abnormal"] is True


def test_refused_images_do_not_vote_and_are_counted():
    from clients.study import ALL_REFUSED

    call = study_call([ScoredImage(0.8, "wrist", 0.5, in_distribution=True),
                       ScoredImage(None, "wrist", refused=True, in_distribution=False),
                       ScoredImage(0.2, "wrist", 0.5, in_distribution=False)])
    assert call.probability == pytest.approx(0.5) and call.scored == 2
    assert call.refused == 1 and call.out_of_distribution == 1
    none = study_call([ScoredImage(None, "hand", refused=True)] * 2)
    assert none.error == ALL_REFUSED and none.refused == 2 and none.probability is None
    mixed = study_call([ScoredImage(None, "hand", refused=True), ScoredImage(None, "hand")])
    assert mixed.error == NO_IMAGE_SCORED
