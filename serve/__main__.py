"""`python -m serve`: the REST API and web UI on 127.0.0.1:8000 (params.yaml `serve:`), serving the champion.

    python -m serve                                   # models:/<registry.model_name>@<registry.alias>
    python -m serve --model-file exports/model.onnx   # an exported file instead (no registry needed)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from tasks import paths
from tasks.config import load_settings
from tasks.errors import SliceWiseError
from tasks.log_output import log_handler
from tasks.redaction import install_log_redaction

console = Console(stderr=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serve", description=__doc__.splitlines()[0])
    parser.add_argument("--model-file", type=Path, help="serve this ONNX file instead of the registry's champion")
    parser.add_argument("--checkpoint", type=Path, default=paths.best_checkpoint("joint"),
                        help="torch checkpoint for Grad-CAM with --model-file (default: %(default)s)")
    parser.add_argument("--metrics", type=Path, default=paths.METRICS,
                        help="metrics shown with --model-file (default: %(default)s)")
    parser.add_argument("--params", type=Path, default=paths.PARAMS, help="parameters file (default: %(default)s)")
    parser.add_argument("--host", help="bind address (default: serve.host)")
    parser.add_argument("--port", type=int, help="port (default: serve.port)")
    parser.add_argument("--poll-seconds", type=float, help="registry polling interval, 0 = off (default: serve.poll_seconds)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def build_app(args: argparse.Namespace):
    from serve.api import create_app
    from serve.model_source import FileSource, RegistrySource

    settings = load_settings(args.params)
    # the command line's values validated as params.yaml's are (a port of 70000 was a traceback from bind())
    overrides = {key: value for key, value in (("poll_seconds", args.poll_seconds), ("host", args.host),
                                               ("port", args.port)) if value is not None and value != ""}
    try:
        cfg = type(settings.serve).model_validate(settings.serve.model_dump() | overrides)
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(str(part) for part in e['loc']).replace('_', '-')}: {e['msg']}"
                             for e in exc.errors())
        raise SliceWiseError(f"invalid option: {problems}") from exc
    if args.model_file:
        if not args.model_file.is_file():  # a typo: said now, not as a server answering 503 to every request
            raise SliceWiseError("no such ONNX file (export one with `make run`, or name an existing file)",
                                 args.model_file)
        source = FileSource(args.model_file, args.checkpoint, args.metrics)
    else:
        source = RegistrySource(settings.registry, settings.tracking, paths.SERVE_CACHE)
    return create_app(source, cfg, bind_host=cfg.host), cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_log_redaction()  # a tracking URI's password never reaches the log
    logging.basicConfig(level=args.log_level.upper(), format="%(message)s", handlers=[log_handler(console)])
    try:
        app, cfg = build_app(args)
    except SliceWiseError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return exc.exit_code
    import uvicorn

    from serve.server import uvicorn_options

    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=args.log_level, log_config=None,
                **uvicorn_options(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
