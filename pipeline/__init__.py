"""Everything distributed: Ray Data, Train and Tune, MLflow, the shard format and storage.

One subpackage per concern (`config`, `data`, `train`, `tune`, `evaluate`, `tracking`), each
with a docstring that names what it may import; ARCHITECTURE.md at the repository root is the
design of record. The two shared top-level modules below may be imported by every subpackage
and import none of them.

May import: nothing else in pipeline.

Public names:
- `errors`: `UserError`, the base of every error a job prints as one line and exit code 2.
- `storage`: the home folder (`apcnet_home`, set by `APCNET_HOME`), one address for a local path or
  an s3:// / gs:// URI (`resolve`, `StoragePath`, `is_remote`), and the one atomic-write rule
  (`write_bytes_atomically`, `write_text_atomically`).
"""
