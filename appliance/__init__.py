"""Offline OCR appliance: pinned model store, vLLM run time, OCR gateway, air-gapped images."""

__version__ = "0.1.0"
