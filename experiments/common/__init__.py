"""What every experiment shares: atomic file writes (`atomic`), provenance of a number (`provenance`) and result
tables (`tables`: CSV upserts by key, markdown)."""
