import os

import torch

# Without a GPU, Triton kernels can only run under the interpreter. Triton decides per kernel
# when its module is imported (@triton.jit), so this must happen before any test module
# imports kernels.*_triton; importing torch does not import triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
