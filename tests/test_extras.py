"""The optional extras: imported on first use, one line with the pip install where one is missing."""

from __future__ import annotations

import sys

import pytest

from polypseg.errors import MissingExtraError
from polypseg.extras import EXTRAS, install_hint, require


def test_an_installed_extra_is_returned():
    module = require("onnx", "ONNX export")
    assert module is sys.modules["onnx"]


@pytest.mark.parametrize("module", sorted(EXTRAS))
def test_a_missing_extra_is_one_line_with_its_pip_install(module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    with pytest.raises(MissingExtraError) as raised:
        require(module, "this feature")
    message = str(raised.value)
    assert message.startswith("this feature needs ") and message.endswith(install_hint(module))
    assert len(message.splitlines()) == 1
    assert isinstance(raised.value, ImportError)  # code that caught ImportError before still does


def test_install_hints_name_the_extras():
    assert install_hint("gradio") == "pip install 'polypseg[demo]'"
    assert install_hint("openvino") == "pip install 'polypseg[fast]'"
