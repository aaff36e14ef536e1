"""What data an assessment needs: the query templates, prefetch resolution, the fetch."""
