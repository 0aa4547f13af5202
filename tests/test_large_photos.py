"""Large photos are viewed as training photos are (issue 23, part 3): a photo whose short side
is over 512 is brought down to 512 before its 448 crop, so the same photo given larger scores
alike. Real photos, Lanczos-upscaled 2x and 4x, through the served preprocessing and the
shipped ONNX scorer; the policy before (a native 448 crop) is measured too, so the test shows
it tells the two apart."""

from __future__ import annotations

import pytest

from sampleiqa.runtime.preprocessing.crops import CROP, VIEW_SIDE, crop_scale, plan_crop
from sampleiqa.runtime.preprocessing.faces import Box

from .helpers import biq_images


def test_a_large_photo_is_brought_to_the_training_short_side_first():
    assert crop_scale(512, 512, None) == 1.0  # BIQ2021's photos: unchanged
    assert crop_scale(480, 640, None) == 1.0  # between the crop and the view: native
    assert crop_scale(300, 400, None) == pytest.approx(CROP / 300)  # small: enlarged to the crop
    assert crop_scale(4000, 3000, None) == pytest.approx(VIEW_SIDE / 3000)  # 12 MP: short side 512
    # a face too large for the crop at that scale shrinks it further, not below the crop
    assert crop_scale(4000, 3000, Box(0, 0, 2800, 2800)) == pytest.approx(CROP / 2800)
    assert crop_scale(4000, 3000, Box(0, 0, 2999, 2999)) == pytest.approx(CROP / 2999)
    plan = plan_crop(2048, 2048, None)
    assert plan.scale == 0.25 and (plan.x, plan.y) == (32, 32)  # the 512 photo's crop, 4x larger


@pytest.mark.slow
def test_the_same_photos_upscaled_2x_and_4x_score_alike():
    pytest.importorskip("scipy")
    biq_images(1)  # skips when ../shared/data is absent
    from sampleiqa.training.studies.large_photos import study

    r = study(20)["policies"]
    now, before = r["now: short side to 512 first"], r["before: a native 448 crop"]
    for size in ("2x", "4x"):
        assert now[size]["srocc_vs_native"] >= 0.95, now
        assert abs(now[size]["mean_shift"]) <= 0.03 and now[size]["max_abs_diff"] <= 0.06, now
        assert now[size]["within_tolerance"] >= 0.75, now
        assert before[size]["mean_shift"] < -0.05  # the native crop of a large photo read as worse
