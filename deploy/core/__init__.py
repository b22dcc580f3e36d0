"""The vocabulary every layer of `deploy` shares: exit statuses and errors, progress and JSON output,
the names in the contract between training and release, and the build-id rule. Imports nothing above it."""
