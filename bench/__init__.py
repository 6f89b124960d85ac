"""The benchmark harness of issue 5: `python -m bench` (`make bench`). A script, not a test."""
