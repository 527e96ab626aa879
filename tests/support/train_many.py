"""train.py's runs for several argument lists in one process, in order: one torchrun launch (process start,
imports, rendezvous) serves several W > 1 runs of a test.

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m tests.support.train_many runs.json

runs.json is a JSON list of argument lists, each as train.py takes it. The first run that fails ends the
process with its error, as train.py would.
"""

import json
import sys

import train


def main(path: str) -> None:
    with open(path) as f:
        runs = json.load(f)
    for argv in runs:
        train.main(argv)


if __name__ == "__main__":
    main(sys.argv[1])
