"""`python -m infra.synth [--env dev ...] [--out cdk.out]`: write every stack's template, offline.

Synthesizes each configured environment (default: all in cdk.json) with the same context the CDK CLI
uses (cdk.json + the committed cdk.context.json), cdk-nag included, into `<out>/<env>/`. No AWS
credentials or network are needed. `npx cdk synth -c env=prod` does the same for one environment
into cdk.out/ directly.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from infra.config import ConfigError, environment_names, read_cdk_context


def synth_env(env: str, outdir: Path, overrides: dict[str, str] | None = None, nag: bool = True):
    """Synthesize one environment; returns the cloud assembly (raises on nag or config errors)."""
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    import aws_cdk as cdk

    from infra.app import build_app

    app = cdk.App(outdir=str(outdir), context=read_cdk_context(overrides={**(overrides or {}), "env": env}))
    build_app(app, env, nag=nag)
    return app.synth()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.synth", description=__doc__.splitlines()[0])
    p.add_argument("--env", action="append", help="environment(s) to synthesize (default: all)")
    p.add_argument("--out", default="cdk.out", help="output directory (default: cdk.out)")
    p.add_argument("-c", "--context", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    try:
        overrides = dict(kv.split("=", 1) for kv in a.context)
        envs = a.env or environment_names(read_cdk_context())
        for env in envs:
            t0 = time.perf_counter()
            assembly = synth_env(env, Path(a.out) / env, overrides)
            for stack in assembly.stacks:
                print(f"{env}: {stack.stack_name:28s} {len(stack.template.get('Resources', {})):3d} resources -> "
                      f"{Path(a.out) / env / stack.template_file}")
            print(f"{env}: synthesized in {time.perf_counter() - t0:.1f} s")
    except (ConfigError, ValueError) as exc:
        print(f"infra.synth: error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # cdk-nag / validation failures: the report says what
        print(f"infra.synth: error: {exc} (see {a.out}/<env>/validation-report.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
