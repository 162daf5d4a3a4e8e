"""``python -m joor_pipeline.sandbox``: the same as ``joor-pipeline sandbox``."""

import sys

from joor_pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["sandbox", *sys.argv[1:]]))
