"""What the training loop needs around the model, one module per concern: config, build, data sources, the loop,
distributed setup, checkpoints, export, warm start, guards, metrics, LR schedule, profiling, device peaks.

embedding/, models/, kernels/ and pipeline/ never import this package: it passes them plain arguments.
"""
