"""The `meerkit` umbrella command and the end-to-end demo."""
