"""The appliance's HTTP front: probes, the OCR API, the OpenAI pass-through, metrics and auth;
engine adapters and document decoding behind them."""
