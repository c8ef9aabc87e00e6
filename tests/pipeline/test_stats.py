import pytest

from pipeline.stats import NORMAL_975, t975


def test_t_quantiles_match_the_tables_and_interpolate_between_them():
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(10) == 2.228
    assert t975(2.5) == 3.575
    assert 2.228 > t975(10.5) > 2.201  # between 10 and 11 degrees of freedom
    assert t975(7.3) == pytest.approx(2.350, abs=0.01)  # exact: 2.3496
    assert t975(1e9) == pytest.approx(NORMAL_975, abs=1e-6) and t975(200) == pytest.approx(1.972, abs=0.002)
    with pytest.raises(ValueError, match="at least 1"):
        t975(0.5)
