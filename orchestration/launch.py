"""The `py_file` Airflow's BeamRunPythonPipelineOperator runs: `mmcurate run` with its INPUT
given as `--mmcurate_input=PATH` (the operator can only pass `--key=value` options).

    python launch.py --mmcurate_input=IN --output=OUT --runner=DataflowRunner --project=... ...

is exactly `mmcurate run IN --output OUT --runner=DataflowRunner --project=...`: mmcurate's own
options (--output, --config, --set, --stages, --no-audit) are taken by its CLI, every other one
goes to Beam untouched. No pipeline logic here.
"""

from __future__ import annotations

import argparse
import sys


INPUT_FLAG = "--mmcurate_input"  # a flag of mmcurate's own: the DAG's Beam options may not name it


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    ap.add_argument(INPUT_FLAG, action="append", required=True)
    ours, rest = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    from mmcurate.pipelines.cli import main as cli_main

    return cli_main(["run", *ours.mmcurate_input, *rest])


if __name__ == "__main__":
    # run as a file: its folder is sys.path[0]; keep this package's modules off the top level
    import os

    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    sys.exit(main())
