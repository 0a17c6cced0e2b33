"""Files copied verbatim into generated model repos (remote code a model dir must carry)."""
