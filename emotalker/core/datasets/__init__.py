"""Datasets (`emotalker-dataset/1`): the reader, tracked frames at a working resolution, Stage 2 conditions, importers."""
