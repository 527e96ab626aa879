"""Single-shot embedding dimension search: search.py runs it (python -m training.dim_search), scoring.py
scores dimensions and picks them under the budget, outputs.py writes the dims, the retrain config and the
warm-start export, report.py the report."""
