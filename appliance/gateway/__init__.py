"""OCR gateway: engine adapters, document decoding, API services (FastAPI wiring lives in its own modules)."""
