"""The contract between prepare and train: file names, the typed manifest, writing and verifying."""
