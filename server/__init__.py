"""The central server: `meerkit subscribe` (MQTT -> SQLite/PostgreSQL)."""
