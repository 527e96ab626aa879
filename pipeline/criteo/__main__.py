import sys

from pipeline.criteo.cli import main

sys.exit(main())
