"""The ``edgeroute`` command line. Errors print one line to stderr and exit 2;
``--debug`` (or ``EDGEROUTE_DEBUG=1``) shows the traceback instead.

Other packages add sub-commands through the ``edgeroute.commands`` entry-point group (the
offline pipeline's live in ``export.cli``). Why entry points: the daemon never imports the
pipeline. Building the parser only lists the group's names; an entry point is loaded when
its command parses its arguments (or the top-level help shows its line), so ``edgeroute
serve`` loads no ``export`` module.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, Protocol

from pydantic import ValidationError

Handler = Callable[[argparse.Namespace], int]
COMMANDS_GROUP = "edgeroute.commands"


class CliError(Exception):
    """A user error on the command line: printed as one line, exit code 2."""


class Command(Protocol):
    """What an ``edgeroute.commands`` entry point loads: one sub-command of another package.

    ``user_errors`` are the exception types ``main`` prints as one line (exit 2)."""

    help: str
    user_errors: tuple[type[BaseException], ...]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the bad value (no usage dump).

    With ``entry_point``, the parser of a plugin command: the entry point is loaded, and
    its arguments added, only when this parser parses or shows its help."""

    def __init__(self, *args: Any, entry_point: metadata.EntryPoint | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._entry_point = entry_point
        self._command: Command | None = None
        self._armed = False

    def command(self) -> Command | None:
        """The plugin command behind this parser (loaded on first call), if any."""
        if self._entry_point is not None and self._command is None:
            self._command = self._entry_point.load()
        return self._command

    def _arm(self) -> None:
        cmd = self.command()
        if cmd is None or self._armed:
            return
        self._armed = True
        self.description = self.description or cmd.help
        cmd.add_arguments(self)
        self.set_defaults(func=cmd.run, user_errors=tuple(cmd.user_errors))

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        # argparse's sub-parsers action calls this on the chosen command's parser.
        self._arm()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._arm()
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                _fill_plugin_help(action)
        return super().format_help()

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _fill_plugin_help(action: argparse._SubParsersAction) -> None:
    """Top-level help only: load the plugin entry points (not their stage modules) for
    their one-line help."""
    for choice in action._choices_actions:
        sub = action.choices.get(choice.dest)
        if isinstance(sub, _Parser) and choice.help is None and (cmd := sub.command()):
            choice.help = cmd.help


def plugin_commands() -> dict[str, metadata.EntryPoint]:
    """The ``edgeroute.commands`` entry points by command name; nothing is imported."""
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=COMMANDS_GROUP):
        found.setdefault(ep.name, ep)
    return found


def _settings(args: argparse.Namespace, **server: Any) -> Any:
    from agent.settings import load_settings

    overrides: dict[str, Any] = {}
    server = {k: v for k, v in server.items() if v is not None}
    if server:
        from agent.settings import Settings

        base = Settings().server.model_dump()
        overrides["server"] = {**base, **server}
    return load_settings(**overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from agent.app import create_app
    from agent.envfile import unknown_variables
    from agent.http_security import check_bind
    from agent.runtime import build_runtime

    settings = _settings(args, host=args.host, port=args.port)
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    check_bind(settings.server.host, settings.server.api_token_file is not None)
    for unknown in unknown_variables():
        logging.getLogger("edgeroute").warning("%s", unknown.message())
    runtime = build_runtime(settings)
    app = create_app(settings, runtime)
    logging.getLogger("edgeroute").info(
        "serving %s on http://%s:%d", list(runtime.experts), settings.server.host,
        settings.server.port,
    )
    # uvicorn re-raises a captured SIGTERM after its graceful shutdown; swallow it so a
    # clean stop exits 0 (a SIGTERM while models load above still kills the process).
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        timeout_graceful_shutdown=10,
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from agent.runtime import build_runtime
    from agent.schemas import ChatRequest, sampling_params

    settings = _settings(args)
    if not args.text.strip():
        raise CliError("the query text is empty; pass the question as an argument")
    req = ChatRequest.model_validate(
        {"model": args.model, "messages": [{"role": "user", "content": args.text}],
         "max_tokens": args.max_tokens, "temperature": args.temperature}
    )
    runtime = build_runtime(settings)

    async def run() -> Any:
        try:
            params = sampling_params(req, settings.server)
            decision = runtime.decide(req.model, req.plain_messages(), params)
            return await runtime.complete(decision, req.plain_messages(), params)
        finally:
            await runtime.aclose()

    completion, decision = asyncio.run(run())
    if args.json:
        print(json.dumps({"expert": decision.expert, "routing": decision.as_dict(),
                          "content": completion.content,
                          "usage": {"prompt_tokens": completion.usage.prompt_tokens,
                                    "completion_tokens": completion.usage.completion_tokens}}))
    else:
        print(f"expert: {decision.expert} ({decision.reason})")
        print(completion.content)
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(json.dumps(settings.model_dump(mode="json"), indent=2))
    return 0


def add_setting_option(parser: argparse.ArgumentParser, setting: str) -> None:
    """``--<name>`` for the setting ``section.name``: its help is the field's description,
    default and environment variable, and its type the field's, so the CLI help and the
    env docs (``config env-example``) come from the same text and cannot drift. The value
    is left None when not given, so the settings' own sources decide."""
    from pydantic_core import PydanticUndefined

    from agent.settings import ENV_PREFIX, Settings

    section, name = setting.split(".")
    annotation = Settings.model_fields[section].annotation
    field = annotation.model_fields[name]  # type: ignore[union-attr]
    kind = field.annotation if field.annotation in (int, float, str) else str
    default = "" if field.default is PydanticUndefined else f"; default {field.default}"
    env = f"{ENV_PREFIX}{section.upper()}__{name.upper()}"
    parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                        help=f"{field.description} (env {env}{default})".replace("%", "%%"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgeroute", description="Edge-to-cloud LLM router daemon and pipeline."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )

    p = sub.add_parser("serve", help="run the daemon on localhost")
    add_setting_option(p, "server.host")
    add_setting_option(p, "server.port")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("predict", help="route and answer one query from the shell")
    p.add_argument("text", help="the user's query")
    p.add_argument("--model", default="auto", help="'auto' or an expert name")
    p.add_argument("--max-tokens", type=int, default=None, help="most tokens to generate")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("config", help="inspect settings")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = csub.add_parser("show", help="print the effective settings (secrets masked)")
    c.set_defaults(func=cmd_config_show)
    c = csub.add_parser("env-example", help="print an example env file (every variable)")
    importlib.import_module("agent.envfile").add_arguments(c)
    c.set_defaults(func=_lazy("agent.envfile"))

    _register_lazy(sub, AGENT_COMMANDS)
    for name, ep in plugin_commands().items():
        if name not in sub.choices:
            sub.add_parser(name, help=None, entry_point=ep)  # help: filled in lazily
    return parser


# (command, module, help) of sub-commands whose module exposes add_arguments(parser) and
# run(args) -> int. A module not yet present is skipped.
AGENT_COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("route", "agent.route_command", "decide who would answer a query, without answering"),
    ("doctor", "agent.doctor", "check this device's set-up and print a table"),
    ("usage", "agent.usage", "print cloud spend per expert and period"),
    ("pull", "agent.pull_command", "download a GGUF (hf:OWNER/REPO/FILE.gguf) into the cache"),
    ("outcomes", "agent.outcomes_command", "export or purge the stored outcomes of answers"),
    ("feedback", "agent.feedback_command", "score an answer by its id (0-1, or up/down)"),
)


def _lazy(module: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        return int(importlib.import_module(module).run(args) or 0)

    return run


def _register_lazy(sub: Any, commands: Sequence[tuple[str, str, str]]) -> None:
    for name, module, help_text in commands:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue  # not built in this install
            raise
        parser = sub.add_parser(name, help=help_text)
        mod.add_arguments(parser)
        parser.set_defaults(func=_lazy(module))


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        value = err.get("input")
        shown = f" (got {value!r})" if not isinstance(value, dict | list) else ""
        return f"invalid setting {loc or exc.title}: {err.get('msg')}{shown}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    from agent.errors import AgentError

    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("EDGEROUTE_DEBUG") == "1"
    expected: tuple[type[BaseException], ...] = (
        AgentError, CliError, ValidationError, OSError, *getattr(args, "user_errors", ()))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("edgeroute: interrupted", file=sys.stderr)
        return 130
    except expected as exc:
        if debug:
            raise
        print(f"edgeroute: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
