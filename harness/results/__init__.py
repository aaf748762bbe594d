"""Run dirs: rows, schema, atomic writes, merging shards."""
