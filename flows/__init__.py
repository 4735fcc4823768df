"""Ray pipelines of filterdb and its command line."""
