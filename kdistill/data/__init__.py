"""Data: the Study schema, the phantom generator, loaders for MIMIC-CXR/CheXpert, image I/O,
expert regions, checks and the prepared (resized) cache."""
