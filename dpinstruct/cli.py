"""The `dpinstruct` command: the project's tools that are not pipeline stages (those run under
`dvc repro`). Each subcommand lives in its module as ``add_arguments(parser)`` and ``run(args)``;
a module is imported only when its subcommand runs, so `dpinstruct --help` answers at once."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {  # name -> (module, one-line summary)
    "lineage": ("dpinstruct.tools.lineage",
                "check the privacy class of every artifact on the DVC graph (optionally write the lineage report)"),
    "export": ("dpinstruct.tools.bundle",
               "write the release bundle: the release, its privacy record and dataset card; nothing private"),
    "audit": ("dpinstruct.tools.canary_audit",
              ("empirical privacy audit: canaries, one training run each at the run's epsilon and at inf, "
               "a lower bound on epsilon (Steinke et al. 2023)")),
    "sweep": ("dpinstruct.tools.sweep",
              "run one DVC experiment per privacy.epsilon and tabulate privacy against utility"),
    "deps": ("dpinstruct.tools.layout",
             "write each stage's code deps in dvc.yaml from the files its module imports (--check: only compare)"),
    "tune": ("dpinstruct.tools.tuning",
             ("choose DP hyperparameter defaults on PUBLIC proxies: ppo-clip (rl.dp_ppo.clip_norm), "
              "generator-lr (train_generator.lr)")),
}


def build_parser(load: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpinstruct", description="Differentially private synthetic instructions "
                                     "(Yu et al., ICML 2024) as a DVC pipeline: the commands beside `dvc repro`.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    for name, (module_name, summary) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        if name == load:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(chosen).parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
