"""Input and output: video files, preprocessing, labels, shipped resources, figures, writes."""
