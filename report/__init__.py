"""The run report: one self-contained HTML page of inline SVG charts drawn from the analytics
queries (``python -m cli.report``)."""
