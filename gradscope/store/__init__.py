"""HDF5 run files: schema, writer (append-only, crash-safe, checksummed) and reader (pandas out).

See docs/hdf5-format.md.
"""
from gradscope.store.reader import RunReader, open_run, pooled_flags, pooled_std
from gradscope.store.recovery import RepairResult, repair
from gradscope.store.schema import FORMAT, SCHEMA_VERSION, window_rows
from gradscope.store.writer import RunWriter, git_commit, package_versions, write_derived

__all__ = ["FORMAT", "SCHEMA_VERSION", "RepairResult", "RunReader", "RunWriter", "git_commit", "open_run",
           "package_versions", "pooled_flags", "pooled_std", "repair", "window_rows", "write_derived"]
