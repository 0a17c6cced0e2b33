"""Run time: GPU memory plan, vLLM command lines, supervisord config, boot sequencing, doctor."""
