"""course_lib.progress: progress bars, shown unless the caller or TQDM_DISABLE hides them."""

import pytest

from course_lib.progress import bars_disabled, progress_bar


@pytest.mark.parametrize(("value", "disabled"), [("1", True), ("true", True), ("YES", True), ("0", False), ("", False)])
def test_tqdm_disable_variable(monkeypatch, value, disabled):
    monkeypatch.setenv("TQDM_DISABLE", value)
    assert bars_disabled() is disabled
    assert progress_bar(range(3), show=True).disable is disabled


def test_show_false_always_hides(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert progress_bar(range(3), show=False).disable
    bar = progress_bar(total=2, show=True)
    assert not bar.disable
    bar.close()
