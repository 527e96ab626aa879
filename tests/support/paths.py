"""Where the repository is: tests that run train.py or a bench script in a subprocess start them there."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
