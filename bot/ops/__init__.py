"""Running it: logging set-up and Prometheus metrics."""
