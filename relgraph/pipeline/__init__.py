"""From a video file to figures and files: the steps behind ``relgraph explain``."""
