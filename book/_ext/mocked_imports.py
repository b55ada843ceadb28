"""Sphinx extension: the modules of ``autodoc_mock_imports`` are mocked for the whole build, so a build where
they are installed documents the same as one where they are not (the Pages build).

autodoc mocks them only while it imports a documented module; Sphinx's source analysis of a class's bases
(``torch.nn.Module``) then imports the real package where it is installed, and every module documented after
it sees the real one. A class built on a mocked base is shown with its own ``__init__`` signature, not the
mock's ``(*args, **kwargs)``.
"""
from __future__ import annotations

import sys
from contextlib import ExitStack

from sphinx.ext.autodoc.mock import _MockObject, mock
from sphinx.ext.autodoc.preserve_defaults import update_defvalue
from sphinx.util import logging
from sphinx.util.inspect import signature, stringify_signature

logger = logging.getLogger(__name__)


def mock_for_the_build(app, config) -> None:
    """Mock `autodoc_mock_imports` until the build ends (those Sphinx itself imported, such as PIL, stay real)."""
    names = list(config.autodoc_mock_imports)
    imported = sorted(n for n in names if n in sys.modules)
    if imported:
        logger.info("mocked imports already imported for real: %s", ", ".join(imported))
    stack = ExitStack()
    stack.enter_context(mock(names))
    app.connect("build-finished", lambda app, exception: stack.close())


def init_signature(app, what, name, obj, options, sig, return_annotation):
    """The class's own ``__init__`` signature when autodoc took the mock's ``__new__``; else no change."""
    if what != "class" or not isinstance(obj, type) or not issubclass(obj, _MockObject):
        return None
    if obj.__init__ is _MockObject.__init__:
        return None
    update_defvalue(app, obj.__init__, bound_method=True)
    init = signature(obj.__init__, bound_method=True, type_aliases=app.config.autodoc_type_aliases)
    shown = app.config.autodoc_typehints not in ("none", "description")
    return stringify_signature(init, show_annotation=shown, show_return_annotation=False), return_annotation


def setup(app):
    app.connect("config-inited", mock_for_the_build)
    app.connect("autodoc-process-signature", init_signature)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
