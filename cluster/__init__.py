"""What it takes to run filterdb's flows on a real Ray cluster."""
