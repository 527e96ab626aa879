"""Three small tables (one looked up by two features) and batches that hit every pooling corner case."""

from embedding import Table

TABLES = [
    Table("a", 11, 5, "sum", ("a",)),
    Table("b", 7, 5, "mean", ("b", "b2")),  # one table, two features
    Table("c", 3, 5, "sum", ("c",)),
]
# duplicates within a bag, across bags and across features; empty bags; a mean-pooled empty bag
BATCHES = [
    {
        "a": [[1, 1, 4], [], [10]],
        "b": [[2], [2, 2, 6], []],
        "b2": [[6], [], [0, 2]],
        "c": [[0], [0], [0]],
    },
    {"a": [[4], [4, 4], [4]], "b": [[], [], []], "b2": [[1, 1], [3], [6]], "c": [[2, 1], [], [1]]},
    {
        "a": [[], [9], [0, 1, 2]],
        "b": [[5, 5], [5], [0]],
        "b2": [[], [], []],
        "c": [[0, 1, 2], [2], []],
    },
]
