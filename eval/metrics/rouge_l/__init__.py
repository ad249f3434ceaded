"""Package marker so the metric script ships in a wheel; load the folder with evaluate.load."""
