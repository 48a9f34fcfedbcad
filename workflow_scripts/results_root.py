"""The results root of a run: ``python -m workflow_scripts.results_root [--configfile F ...]``
prints it as an absolute path (for the Makefile's ``report``, ``cluster``, ``compare`` and
``readme-numbers`` targets).

The root is the config key ``results_dir`` (default ``results``), resolved like every key:
config.yaml < ``--configfile`` < config/site.yaml's ``results_dir`` < ``$LAYER_REDUNDANCY_RESULTS``
< ``--config results_dir=...``. A relative root is relative to the working directory of the
run (the project folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def absolute(config: dict, directory: str | Path = ROOT) -> Path:
    """The results root of a (validated) ``config`` of the project in ``directory``."""
    from workflow_scripts.core.paths import results_root

    return Path(directory).resolve() / results_root(config)


def results_root(configfiles: list[str] | tuple = (), directory: str | Path = ROOT) -> Path:
    """The absolute results root of the run ``configfiles`` (relative to ``directory``) give
    in the project ``directory``."""
    from workflow_scripts.resource_plan import load_config

    return absolute(load_config(list(configfiles), Path(directory)), directory)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configfile", "--configfiles", nargs="+", action="extend", default=[],
                    help="as for snakemake")  # fmt: skip
    ap.add_argument("-C", "--directory", type=Path, default=ROOT, help="project folder")
    args = ap.parse_args(argv)
    try:
        print(results_root(args.configfile, args.directory))
    except Exception as err:  # the config's own message names the key
        print(f"results_root: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
