"""The central server: `meerkit subscribe` (MQTT -> SQLite/PostgreSQL).

subscriber.py (the run loop), validate.py (what is stored), stores/ (SQLite, PostgreSQL),
cli.py (the `meerkit subscribe` flags). Like train/ and export/, the server imports only
`edge_runtime.contract` from the device package, with one exception: `edge_runtime.mqtt_client`,
the one MQTT client factory (settings, password, TLS, named connection problems) that the
device and the server share.
"""
