"""Data in: sources (IDX, folders, manifests), ingest (split, dedupe, select), on-disk splits, augmentation."""
