import os
import sys

# The preprocessing uses no BLAS. Without its idle thread pool this process stays single-threaded, so the
# workers can be plain forks of it (pipeline/criteo/pool.py), which start in milliseconds.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pipeline.criteo.cli import main  # noqa: E402

sys.exit(main())
