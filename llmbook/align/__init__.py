"""Alignment: the chat format, supervised fine-tuning, and (Parts 7-9) rewards and RL."""
