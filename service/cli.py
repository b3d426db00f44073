"""`attngan serve`: the production server (gunicorn with service/gunicorn_conf.py) from the command line."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="serve the HTTP API and web page (gunicorn)",
        description="Run the HTTP service: POST /api/v1.0/bird, the web page at /, /healthz, /readyz, /metrics. "
                    "Every option can also be set by its environment variable (see service/settings.py).")
    p.add_argument("--bundle", help="model bundle directory (env BUNDLE_DIR; default models/default)")
    p.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"), help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")), help="port (default 8080)")
    p.add_argument("--workers", type=int, help="worker processes, one model copy each (env WEB_CONCURRENCY; default 1)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="env DEVICE (default auto)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="env PRECISION (default auto: measured)")
    p.add_argument("--max-batch-size", type=int, help="env MAX_BATCH_SIZE (default 4)")
    p.add_argument("--max-wait-ms", type=float, help="env MAX_WAIT_MS (default 10)")
    p.add_argument("--queue-size", type=int, help="env QUEUE_SIZE (default 16)")
    p.add_argument("--bucket", help="S3 bucket for images (env BUCKET_NAME; default: local directory)")
    p.add_argument("--image-dir", help="local image directory (env IMAGE_DIR)")
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    from attngan.bundle import load_bundle
    from service.settings import from_env

    env = {"BUNDLE_DIR": args.bundle, "WEB_CONCURRENCY": args.workers, "DEVICE": args.device,
           "PRECISION": args.precision, "MAX_BATCH_SIZE": args.max_batch_size, "MAX_WAIT_MS": args.max_wait_ms,
           "QUEUE_SIZE": args.queue_size, "BUCKET_NAME": args.bucket, "IMAGE_DIR": args.image_dir}
    for key, value in env.items():
        if value is not None:
            os.environ[key] = str(value)
    os.environ["BIND"] = f"{args.host}:{args.port}"
    settings = from_env()  # bad variables: AttnGANError, one line
    if settings.model_uri in ("", "bundled"):  # (an S3 MODEL_URI is fetched and checked by gunicorn_conf.py)
        load_bundle(settings.bundle_dir)  # a missing or corrupt bundle: one line, before gunicorn starts
    conf = Path(__file__).with_name("gunicorn_conf.py")
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or shutil.which("gunicorn")
    argv = [gunicorn or sys.executable, *([] if gunicorn else ["-m", "gunicorn"]), "-c", str(conf),
            "service.app:create_app()"]
    os.execv(argv[0], argv)
    return 0  # not reached
