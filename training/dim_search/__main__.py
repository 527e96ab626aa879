"""python -m training.dim_search: the single-shot embedding dimension search (training/dim_search/search.py)."""

from training.dim_search.search import main

if __name__ == "__main__":
    main()
