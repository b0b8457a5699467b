"""effml.study: the main job. `effml.study(model, evaluate, example_inputs=...)` studies the user's own model
(effml.study.user); the package is callable so that the name works both as the function and as this package."""

import sys as _sys
import types as _types


class _CallableModule(_types.ModuleType):
    def __call__(self, *args, **kwargs):
        from effml.study.user import study

        return study(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
