"""Pipeline sub-commands of ``edgeroute``, listed for agent/cli.py to register.

Each stage module that offers a command exposes ``add_arguments(parser)`` and
``run(args) -> int`` and imports torch & co. only inside functions, so registering the
commands stays cheap.
"""

from __future__ import annotations

# (command, module, help). A module missing here is a stage not yet built.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("collect", "export.collect", "prompt experts with datasets; write the expert table"),
    ("table", "export.importers", "expert tables: import public routing tables"),
    ("train", "export.train", "train a router on an expert table"),
    ("evaluate", "export.evaluate", "evaluate routers and baselines on an expert table"),
    ("calibrate", "export.calibrate", "pick the cost weight for a target cloud share/quality"),
    ("export", "export.onnx_export", "export a trained router to an ONNX int8 bundle"),
)
