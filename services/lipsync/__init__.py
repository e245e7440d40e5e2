"""The lipsync service: makes the mouth in each frame of a video follow a voice."""
