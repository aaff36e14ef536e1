"""Example requests that do not expire (``hfs-cds examples``).

* :mod:`.build` makes the set from the synthetic patient catalogue, dated relative to a day: a
  prefetch-filled request for every service, an explanatory-card request, a feedback body, a
  fetch-mode request and the matching Bundle for ``hfs-cds score``, with an index (README.txt);
* :mod:`.command` writes them to a folder.
"""
