"""What every experiment shares: atomic file writes (`atomic`), provenance of a number (`provenance`), result
tables (`tables`: CSV upserts by key, markdown), up-front checks of output paths (`outputs`), one process at a time
in a folder (`folder_lock`) and the one-line usage errors of the command lines (`cli`)."""
