"""meerkit's field runtime: numpy + a TFLite interpreter + paho-mqtt. Never torch or tensorflow."""

__version__ = "0.1.0"
