"""Execution engines for scoring very large image sets (the local run is `anomalens.inspection`).

`ray`: a Ray Data pipeline over shards of the input list, scored by a pool of actors that each
load the saved model once, results written as one Parquet + one JSONL file per shard.
"""
