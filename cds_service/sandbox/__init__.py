"""Synthetic patients, a loader and a smoke test for any FHIR server (``hfs-cds synth|load|smoke``).

* :mod:`.bundles` builds transaction Bundles of conditional updates that load twice without duplicates;
* :mod:`.scenarios` builds deterministic FHIR R4 test patients, one per scenario of the mapping rules;
* :mod:`.loader` loads a transaction Bundle into any FHIR server without duplicates;
* :mod:`.smoke` fires every hook for every synthetic patient like an EHR and checks the cards;
* :mod:`.commands` adds the three commands to the ``hfs-cds`` CLI.
"""
