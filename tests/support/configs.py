"""Small configs the tests share: every table placement, optimizer and corner case at a few steps."""

# five tables of every placement, skewed ids, empty bags: the sharded equivalence and exchange-dtype tests
SHARDED_TOML = """
[data]
num_dense = 4
zipf_exponent = 1.6   # skewed: many duplicate ids inside a rank and across ranks
bag_min = 0           # empty bags
bag_max = 4
[model]
bottom_mlp = [8, 4]
top_mlp = [8]
[embedding]
dim = 4
replicate_below_bytes = 300
[[embedding.tables]]
name = "big"
num_embeddings = 37
pooling = "sum"
[[embedding.tables]]
name = "shared"
num_embeddings = 23
pooling = "mean"
features = ["shared_a", "shared_b"]
[[embedding.tables]]
name = "small"
num_embeddings = 5
[[embedding.tables]]
name = "pinned"
num_embeddings = 29
placement = "row"     # a pinned placement wins over embedding.sharding
[[embedding.tables]]
name = "odd"
num_embeddings = 11
pooling = "mean"
[optimizer]
dense = "adam"
dense_lr = 0.01
sparse_lr = 0.1
[train]
steps = 4
global_batch_size = 16
"""


# four tables, every log step, eval: checkpoints, faults, bad input
CHECKPOINT_TOML = """
[run]
log_every = 2
[data]
num_dense = 4
zipf_exponent = 1.4
bag_min = 0
bag_max = 3
[model]
bottom_mlp = [8, 4]
top_mlp = [8]
[embedding]
dim = 4
replicate_below_bytes = 300
[[embedding.tables]]
name = "big"
num_embeddings = 37
[[embedding.tables]]
name = "shared"
num_embeddings = 23
pooling = "mean"
features = ["shared_a", "shared_b"]
[[embedding.tables]]
name = "small"
num_embeddings = 5
[[embedding.tables]]
name = "pinned"
num_embeddings = 29
placement = "row"
[optimizer]
dense = "adam"
dense_lr = 0.01
sparse = "adam"
sparse_lr = 0.1
[train]
steps = 6
global_batch_size = 16
warmup_steps = 1
[eval]
samples = 64
batch_size = 32
"""


# dynamic tables beside static ones: admission, expiry, growth, LRU at capacity
DYNAMIC_TOML = """
[data]
num_dense = 4
zipf_exponent = 1.3
bag_min = 0
bag_max = 3
[model]
bottom_mlp = [8, 4]
top_mlp = [8]
[embedding]
dim = 4
replicate_below_bytes = 300
[[embedding.tables]]
name = "static"
num_embeddings = 37
[[embedding.tables]]
name = "users"          # admission, age eviction, growth from a tiny capacity
num_embeddings = 300
hash_ids = true         # raw 63-bit ids
dynamic = true
capacity = 8
admit_min_freq = 2
evict_after_steps = 3
key_shards = 4
[[embedding.tables]]
name = "items"          # two features, mean pooling, LRU at a fixed capacity
num_embeddings = 200
features = ["items_a", "items_b"]
pooling = "mean"
hash_ids = true
dynamic = true
capacity = 48            # 12 rows per key shard
evict_when_full = true
key_shards = 4
[[embedding.tables]]
name = "small"
num_embeddings = 5
[optimizer]
dense = "adam"
dense_lr = 0.01
sparse_lr = 0.1
[train]
steps = 8
global_batch_size = 16
"""


# tables of dims 64, 4, 16, 4, 64 (embedding.dim 16), the groups' features interleaved: per-table dims
MIXED_DIMS_TOML = """
[run]
log_every = 2
[data]
num_dense = 4
zipf_exponent = 1.6
bag_min = 0
bag_max = 4
[model]
bottom_mlp = [8, 16]
top_mlp = [8]
[embedding]
dim = 16
# small (dim 16) and shared (dim 4) replicated: two groups' tables in the one all-reduce
replicate_below_bytes = 500
[[embedding.tables]]
name = "big"
num_embeddings = 37
dim = 64
[[embedding.tables]]
name = "shared"
num_embeddings = 23
dim = 4
pooling = "mean"
features = ["shared_a", "shared_b"]
[[embedding.tables]]
name = "small"
num_embeddings = 5
[[embedding.tables]]
name = "pinned"
num_embeddings = 29
dim = 4
placement = "row"
[[embedding.tables]]
name = "odd"
num_embeddings = 11
dim = 64
pooling = "mean"
[optimizer]
dense = "adam"
dense_lr = 0.01
sparse = "adagrad"
sparse_lr = 0.1
[train]
steps = 6
global_batch_size = 16
warmup_steps = 1
[eval]
samples = 64
batch_size = 32
"""
