"""The `halffull` command. Each subcommand lives in its own module and is imported only when used,
so `halffull router` never pays for kopf and `halffull operator` never imports vLLM."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# name -> (module, help). The module defines `add_arguments(parser)` and `run(args) -> int`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("halffull.controller.main", "run the LLMService operator against KUBECONFIG"),
    "dev": ("halffull_dev.cluster.main", "local control plane: up, down, env, demo"),
    "router": ("halffull.router.main", "the SAL routing sidecar in front of the vLLM replicas"),
    "sim": ("halffull.sim.main", "simulate vLLM replicas under LARRY/SAL on a trace (no GPU)"),
    "bench": ("halffull.sim.bench", "alpha/beta tuning on your trace; simulator vs real engine"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="halffull", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runners: dict[str, Callable[[argparse.Namespace], int]] = {}
    chosen = (list(argv) if argv is not None else sys.argv[1:])[:1]
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if chosen == [name]:  # import only the module the user asked for
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name is None or not exc.name.startswith("halffull_dev"):
                    raise
                parser.exit(
                    2,
                    f"halffull {name}: needs the development tools (dev/ in a "
                    "checkout: `pip install -e ./dev`, done by hack/setup.sh)\n",
                )
            module.add_arguments(p)
            runners[name] = module.run
    args = parser.parse_args(argv)
    return runners[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
