"""The appliance's HTTP front: probes now; the OCR API, metrics and auth attach their own routers."""
